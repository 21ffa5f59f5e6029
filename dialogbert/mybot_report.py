"""What `dialogbert bot` reports (dialogbert.mybot): bot.json and the terminal report of a build or
an --add: what was read, what was dropped, what the bot serves. Files under the bot's folder name
the inputs by their labels (``export 1``, ...), never by path; the terminal shows the paths."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

BOT_FILE = "bot.json"
BAD_LINES_SHOWN = 10  # broken lines named in the report (all are counted)


def relabel(text: str, labels: dict[str, str]) -> str:
    """``text`` (a path, or "path: ...") with the input's path replaced by its label (``export N``)."""
    for path, label in labels.items():
        if text == path or text.startswith(path + ":"):
            return label + text[len(path):]
    return text


def read_report(summary: dict, labels: dict[str, str]) -> tuple[dict, dict]:
    """(in bot.json: exports by label; on the terminal: the same with paths)."""
    files = [{"export": labels.get(i["path"], "export"), "path": i["path"], "sha256": i["sha256"],
              "format": i["format"], "messages": i["messages"], "conversations": i["conversations"],
              "bad_lines": i["bad_lines"], "bad_line_examples": i["bad_line_examples"][:BAD_LINES_SHOWN],
              **({"duplicate_of": labels.get(i["duplicate_of"], "export")} if i.get("duplicate_of") else {})}
             for i in summary["inputs"]]
    t = summary["totals"]
    read = {"files": files, "messages": t["messages"], "conversations": t["conversations"], "turns": t["turns"]}
    dropped = {"bad_lines": t["bad_lines"], **summary["drops"], "media": summary.get("media", {}),
               "personal_data_replaced": summary.get("pii", {})}
    return read, dropped


def for_file(read: dict, labels: dict[str, str]) -> dict:
    files = []
    for f in read["files"]:
        g = {k: v for k, v in f.items() if k != "path"}
        g["bad_line_examples"] = [relabel(x, labels) for x in f["bad_line_examples"]]
        files.append(g)
    return dict(read, files=files)


def serves(index: Path) -> dict:
    from preprocess.pipeline import detect_lang
    from retrieval.index import INFO_FILE, RESPONSES_FILE
    info = json.loads((index / INFO_FILE).read_text("utf-8"))
    langs: Counter = Counter()
    with open(index / RESPONSES_FILE, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                langs[detect_lang([json.loads(line)["text"]])] += 1
    return {"replies": info["count"], "contexts": info.get("memory", 0), "languages": dict(langs.most_common()),
            "left_out": info.get("dropped", {})}


def print_report(rep: dict, build: dict, names: dict[str, int] | None, out: Path, tuned: Path) -> None:
    """The terminal report of a build or an --add (``tuned``: where a fine-tuned model would be)."""
    r, d = build["read"], build["dropped"]
    what = "added to" if build["kind"] == "add" else "built"
    print(f"\n=== your bot: {out}  ({what})")
    print(f"read: {len(r['files'])} export(s), {r['messages']} messages, {r['conversations']} conversations")
    for f in r["files"]:
        dup = f" (the same file as {f['duplicate_of']})" if f.get("duplicate_of") else ""
        print(f"  {f['export']}: {f['path']}  {f['format']}, {f['messages']} messages, "
              f"{f['conversations']} conversations, {f['bad_lines']} broken lines{dup}")
        for ex in f["bad_line_examples"]:
            print(f"    broken: {ex}")
    drops = {k: v for k, v in d.items() if k not in ("media", "personal_data_replaced") and v}
    print("dropped: " + (", ".join(f"{k} {v}" for k, v in drops.items()) or "nothing")
          + (f"; media {sum(d['media'].values())} (" + ", ".join(f"{k} {v}" for k, v in d["media"].items()) + ")"
             if d["media"] else ""))
    pii = d["personal_data_replaced"]
    print("personal data replaced: " + (", ".join(f"{k} {v}" for k, v in pii.items()) or "none found"))
    if build.get("already_in_bot"):
        print(f"already in the bot: {build['already_in_bot']} conversations (left out)")
    c = build["replies"]
    who = (", ".join(f"{n} ({m} messages)" for n, m in names.items()) if names else "every speaker")
    print(f"replies by {who}: {c.get('turns', 0)} turns in {c.get('conversations', 0)} conversations; "
          f"{c.get('first_turns', 0)} open a conversation (answer nothing), {c.get('candidates', 0)} are candidates")
    print(f"index: {build['index']['added']} replies added; left out: "
          + (", ".join(f"{k} {v}" for k, v in build["index"]["left_out"].items()) or "nothing"))
    s = rep["serves"]
    print(f"serves: {s['replies']} replies ({', '.join(f'{k} {v}' for k, v in s['languages'].items())}), "
          f"{s['contexts']} contexts in the memory; speakers: {rep['speakers']}; ranker: "
          + (rep["ranker"].get("note") or " + ".join(rep["ranker"]["features"])))
    t = rep.get("finetune") or {}
    if build["kind"] != "add" and t:
        print("fine-tuning on your pairs: " + (t.get("note") or (
            f"{t['steps']} steps in {t['minutes']:g} minutes on {t['pairs']} pairs; R10@1 on {t['carve_out']} of your "
            f"conversations' turns held out: {t['R10@1_before']:.3f} -> {t['R10@1_after']:.3f}, "
            + (f"the fine-tuned model ({tuned}) serves" if t["kept"] else
               f"not measurably better (standard error {t['gain_se']:.3f}): the model as given serves"))))
    print(f"report: {out / BOT_FILE}")
