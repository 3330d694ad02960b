"""Generated sentiment-like texts: the label is which marker word a sentence contains.

``WORDS``: no single byte tells the classes apart, but how often each byte occurs does, so a
bag-of-bytes model can learn it. ``ANAGRAMS``: both classes' markers use the same bytes
(``stop``/``spot`` vs ``pots``/``tops``), so only the ORDER of bytes tells the class: a model
that ignores order stays at chance.
"""

import numpy as np
import pandas as pd

FILLER = "the a movie plot was it and this film actor scene story we saw".split()
WORDS = (("bad", "awful", "boring"), ("good", "great", "superb"))  # class 0, class 1
ANAGRAMS = (("pots", "tops"), ("stop", "spot"))


def sentiment_texts(n: int, seed: int, markers=WORDS) -> tuple[list[str], np.ndarray]:
    """``n`` sentences of 2-4 filler words with one marker of the label's class inserted anywhere.

    The longest is 4 x 5 letters + a 6-letter marker + 4 spaces = 30 bytes.
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], rng.integers(0, 2, n)
    for label in labels:
        words = list(rng.choice(FILLER, size=int(rng.integers(2, 5))))
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(markers[label])))
        texts.append(" ".join(words))
    return texts, labels


def sentiment_frame(n: int, seed: int) -> pd.DataFrame:
    texts, labels = sentiment_texts(n, seed)
    return pd.DataFrame({"review": texts, "stars": labels})
