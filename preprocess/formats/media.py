"""Media placeholders and system texts, as the apps write them in each UI language.

    media_kind(text) -> "photo" | "video" | "emoticon" | "sticker" | "file" | "voice" | "call"
                        | "location" | "contact" | "deleted" | "notice" | ... | None
    system_kind(text) -> True when a message text is really a system notice (deleted, unsent,
                         notice board), so readers mark it system=True.
"""
from __future__ import annotations

import re

# Whole-message placeholders, compared after stripping <>, [], () and case-folding.
_EXACT: dict[str, str] = {}
for _kind, _words in {
    "photo": "사진 photo photos image picture 写真 照片 圖片 图片 相片 画像",
    "video": "동영상 video videos 動画 影片 视频 視訊",
    "emoticon": "이모티콘 emoticon emoticons 이모지 emoji 絵文字 表情貼 表情",
    "sticker": "스티커 sticker stickers スタンプ 貼圖 贴图",
    "file": "파일 file files ファイル 檔案 文件",
    "voice": "음성메시지 음성메세지 voice 音声メッセージ ボイスメッセージ 語音訊息",
    "call": "보이스톡 페이스톡 通話 音声通話 ビデオ通話 통화",
    "location": "지도 위치 location 位置情報 位置",
    "contact": "연락처 contact 連絡先 聯絡資訊",
    "music": "음악 music",
    "poll": "투표 poll 投票",
    "album": "앨범 album アルバム 相簿",
    "gift": "선물 gift 선물하기 ギフト",
    "link": "샵검색 #search",
}.items():
    for _w in _words.split(" "):
        _EXACT[_w.lower()] = _kind
_EXACT.update({"음성 메시지": "voice", "voice message": "voice", "voice call": "call",
               "video call": "call", "missed call": "call", "부재중 통화": "call"})

_DELETED = frozenset({
    "삭제된 메시지입니다.", "삭제된 메시지입니다", "메시지가 삭제되었습니다.", "This message was deleted.",
    "This message has been deleted.", "Deleted message", "Message deleted.",
    "Message unsent.", "Message unsent", "You unsent a message.", "メッセージの送信を取り消しました",
    "メッセージの送信を取り消しました。", "메시지 전송을 취소했습니다.", "메시지 전송이 취소되었습니다.",
    "已收回訊息", "已收回讯息",
})
_NOTICE_PREFIXES = ("톡게시판 '", "톡게시판 \"", "Chatroom notice", "Notice:", "공지: ", "[공지사항]")

_COUNTED = re.compile(r"(사진|동영상|파일|photos?|videos?|files?|写真|動画|照片|圖片) ?\d+ ?(장|개|枚|張|件)?$", re.I)
_FILE = re.compile(r"(?:파일|file|ファイル|檔案|文件) ?[:：] ?\S", re.I)
_BRACKETS = {"<": ">", "[": "]", "(": ")", "（": "）", "【": "】", "「": "」"}


def media_kind(text: str) -> str | None:
    """The kind of media when ``text`` is only a placeholder, else None."""
    t = text.strip()
    if not t or len(t) > 200 or t[0].lower()[0] not in _FIRST:    # the usual case: a chat line
        return None
    if t in _DELETED:
        return "deleted"
    if t.startswith(_NOTICE_PREFIXES):
        return "notice"
    if _FILE.match(t):
        return "file"
    if t[0] in _BRACKETS and t[-1] == _BRACKETS[t[0]]:
        t = t[1:-1].strip()
    low = t.lower()
    kind = _EXACT.get(low)
    if kind:
        return kind
    m = _COUNTED.match(low)
    if m:
        return _EXACT.get(m.group(1).rstrip("s") if m.group(1).isascii() else m.group(1), "photo")
    return None


# Every test in media_kind is anchored at the start of the stripped text: the lower-cased first
# character of anything it recognises is one of these (placeholders, deleted-message texts,
# notice prefixes, the first letters of _FILE and _COUNTED, opening brackets).
_FIRST = frozenset({w[0] for w in _EXACT} | {w[0].lower() for w in (*_DELETED, *_NOTICE_PREFIXES)}
                   | set("파fフ檔文사동pv写動照圖") | set(_BRACKETS))


def is_system_text(text: str) -> bool:
    """A message text that is no one's turn: a deleted/unsent message or a notice-board post."""
    return text in _DELETED or text.startswith(_NOTICE_PREFIXES)


# Join/leave/invite/kick lines that KakaoTalk PC writes without a [name] [time] prefix.
KAKAO_SYSTEM_LINE = re.compile(
    r".+님(?:이|을|과|께서) .*(?:초대(?:했|하였)습니다|나갔습니다|들어왔습니다|내보냈습니다|"
    r"퇴장(?:했|하였|하셨)습니다|입장(?:했|하였|하셨)습니다|참여(?:했|하였)습니다)\.?"
    r"|.+ (?:invited .+|left this chatroom|left the chatroom|has left|joined this chatroom|"
    r"was kicked(?: out)?(?: of this chatroom)?|has been removed(?: from this chatroom)?)\."
)
