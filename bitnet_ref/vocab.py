"""The project's own byte-level BPE vocabulary: GPT-2 byte alphabet, merges learned from an embedded text, any size.

Layout of a vocabulary of n tokens (ids in this order):
- 0..255: the 256 byte tokens, spelled with GPT-2's byte-to-unicode characters, in GPT-2's order (printable ASCII first,
  as in the Llama 3 vocabulary);
- 256..n-3: the tokens the merges make, in merge order (a later merge that spells an existing token adds no token).
  The first merges are learned by a small BPE training run over TRAINING_TEXT, pre-split the way Llama 3 pre-tokenizes
  ASCII text; when training runs out of pairs, the rest extend earlier merge tokens by one lowercase letter (breadth
  first), so every merge joins two earlier tokens and every token above 255 is made by a merge;
- n-2, n-1: `<|begin_of_text|>` (bos) and `<|end_of_text|>` (eos), CONTROL.
The GGUF keys say `tokenizer.ggml.model = "gpt2"`, `tokenizer.ggml.pre = "llama-bpe"` (llama.cpp's LLAMA3 pre-tokenizer,
the one BitNet b1.58 2B-4T uses). Everything is deterministic: same size, same bytes.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache

from bitnet_ref.bpe import byte_to_unicode, encode_bytes
from bitnet_ref.constants import (
    KEY_ADD_BOS,
    KEY_ADD_EOS,
    KEY_BOS_ID,
    KEY_EOS_ID,
    KEY_MERGES,
    KEY_TOKEN_TYPE,
    KEY_TOKENIZER_MODEL,
    KEY_TOKENIZER_PRE,
    KEY_TOKENS,
    TokenType,
    ValueType,
)
from bitnet_ref.errors import ConfigError

N_BYTES = 256
BOS_TEXT = "<|begin_of_text|>"
EOS_TEXT = "<|end_of_text|>"
SPECIALS = (BOS_TEXT, EOS_TEXT)
MIN_VOCAB = N_BYTES + len(SPECIALS)
TOKENIZER_MODEL = "gpt2"
TOKENIZER_PRE = "llama-bpe"
FILL_LETTERS = "abcdefghijklmnopqrstuvwxyz"  # suffixes of the filler merges, in this order

# Llama 3's pre-tokenizer regex, with \p{L} spelled [^\W\d_] and \p{N} spelled \d (exact on ASCII text).
PRETOKENIZE = re.compile(
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|(?:_|[^\r\n\w])?[^\W\d_]+|\d{1,3}| ?(?:_|[^\s\w])+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The training text: the Gettysburg Address (1863, public domain) and a few plain sentences with digits and punctuation.
TRAINING_TEXT = """\
Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in Liberty, and
dedicated to the proposition that all men are created equal.
Now we are engaged in a great civil war, testing whether that nation, or any nation so conceived and so dedicated, can
long endure. We are met on a great battle-field of that war. We have come to dedicate a portion of that field, as a
final resting place for those who here gave their lives that that nation might live. It is altogether fitting and
proper that we should do this.
But, in a larger sense, we can not dedicate -- we can not consecrate -- we can not hallow -- this ground. The brave
men, living and dead, who struggled here, have consecrated it, far above our poor power to add or detract. The world
will little note, nor long remember what we say here, but it can never forget what they did here. It is for us the
living, rather, to be dedicated here to the unfinished work which they who fought here have thus far so nobly
advanced. It is rather for us to be here dedicated to the great task remaining before us -- that from these honored
dead we take increased devotion to that cause for which they gave the last full measure of devotion -- that we here
highly resolve that these dead shall not have died in vain -- that this nation, under God, shall have a new birth of
freedom -- and that government of the people, by the people, for the people, shall not perish from the earth.
The quick brown fox jumps over the lazy dog; then it runs 12 miles in 3 hours (about 4.0 miles an hour).
A small model reads the text, one token at a time: "What comes next?" it asks, and the answer is a number.
In 2025, 1,024 layers would not fit; 30 layers of 2560 values each do, with 128256 tokens and 4096 positions.
Ternary weights are -1, 0 or +1 times a scale, so each one needs less than two bits: 1.58 bits, to be exact!
"""


@dataclass(frozen=True)
class Vocabulary:
    """A byte-level BPE vocabulary: tokens, their types, merges ("a b"), special ids, and its GGUF metadata."""

    tokens: tuple[str, ...]
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    bos_id: int
    eos_id: int

    @property
    def n_vocab(self) -> int:
        """Number of tokens."""
        return len(self.tokens)

    def metadata(self) -> list[tuple[str, object, tuple[ValueType, ...]]]:
        """The tokenizer.* key/value/type triples to write into a GGUF file."""
        return [
            (KEY_TOKENIZER_MODEL, TOKENIZER_MODEL, (ValueType.STRING,)),
            (KEY_TOKENIZER_PRE, TOKENIZER_PRE, (ValueType.STRING,)),
            (KEY_TOKENS, list(self.tokens), (ValueType.ARRAY, ValueType.STRING)),
            (KEY_TOKEN_TYPE, list(self.token_types), (ValueType.ARRAY, ValueType.INT32)),
            (KEY_MERGES, list(self.merges), (ValueType.ARRAY, ValueType.STRING)),
            (KEY_BOS_ID, self.bos_id, (ValueType.UINT32,)),
            (KEY_EOS_ID, self.eos_id, (ValueType.UINT32,)),
            (KEY_ADD_BOS, True, (ValueType.BOOL,)),
            (KEY_ADD_EOS, False, (ValueType.BOOL,)),
        ]


@lru_cache(maxsize=4)
def build_vocabulary(n_vocab: int) -> Vocabulary:
    """The deterministic byte-level BPE vocabulary of exactly n_vocab tokens (at least 258)."""
    if n_vocab < MIN_VOCAB:
        raise ConfigError(f"n_vocab = {n_vocab}: a byte-level BPE vocabulary needs at least {MIN_VOCAB} tokens")
    n_new = n_vocab - MIN_VOCAB
    byte_tokens = list(byte_to_unicode().values())
    merges = learn_merges(TRAINING_TEXT, n_new)
    new_tokens = list(dict.fromkeys(a + b for a, b in merges))
    filler = fill_merges(set(byte_tokens) | set(new_tokens), new_tokens, n_new - len(new_tokens))
    merges += filler
    new_tokens += [a + b for a, b in filler]
    types = (TokenType.NORMAL,) * (n_vocab - len(SPECIALS)) + (TokenType.CONTROL,) * len(SPECIALS)
    return Vocabulary(
        tokens=(*byte_tokens, *new_tokens, *SPECIALS),
        token_types=tuple(int(t) for t in types),
        merges=tuple(f"{a} {b}" for a, b in merges),
        bos_id=n_vocab - 2,
        eos_id=n_vocab - 1,
    )


def learn_merges(text: str, n_tokens: int) -> list[tuple[str, str]]:
    """BPE merges learned from text until they make n_tokens distinct tokens: most frequent pair first, ties to the
    smallest pair (a, b). Two merges can spell the same token ("ab c", "a bc"); both are kept, as in Llama 3."""
    counts = Counter(encode_bytes(w) for w in PRETOKENIZE.findall(text))
    words = [list(w) for w in counts]
    freq = list(counts.values())
    pairs: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        _count_pairs(w, freq[i], i, pairs, where)
    merges: list[tuple[str, str]] = []
    made: set[str] = set()
    while len(made) < n_tokens and pairs:
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        made.add(best[0] + best[1])
        for i in sorted(where.pop(best)):
            _count_pairs(words[i], -freq[i], i, pairs, None)
            words[i] = _merge_word(words[i], best)
            _count_pairs(words[i], freq[i], i, pairs, where)
        pairs.pop(best, None)
    return merges


def _count_pairs(word: list[str], n: int, i: int, pairs: Counter, where: defaultdict | None) -> None:
    """Add n occurrences of each adjacent pair of word i to pairs (and note where it occurs)."""
    for p in zip(word, word[1:], strict=False):
        pairs[p] += n
        if pairs[p] <= 0:
            del pairs[p]
        if where is not None:
            where[p].add(i)


def _merge_word(word: list[str], pair: tuple[str, str]) -> list[str]:
    """Word symbols with every left-to-right occurrence of pair joined."""
    out: list[str] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def fill_merges(known: set[str], bases: list[str], count: int) -> list[tuple[str, str]]:
    """`count` more merges (t, letter) that extend tokens by one lowercase letter, breadth first from bases; each
    makes a token not in known."""
    queue = list(bases) or list(FILL_LETTERS)
    out: list[tuple[str, str]] = []
    head = 0
    while len(out) < count:
        base = queue[head]
        head += 1
        for letter in FILL_LETTERS:
            token = base + letter
            if token in known:
                continue
            known.add(token)
            queue.append(token)
            out.append((base, letter))
            if len(out) == count:
                break
    return out
