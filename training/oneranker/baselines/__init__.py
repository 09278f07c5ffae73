"""Baselines named for what they are (issue 14): `hstu` = the Step-1 G-Decoder alone with a
next-item head (HSTU), trained and evaluated under the HSTU paper's MovieLens protocol
(`oneranker.data.movielens`); `generator_eval` = OneRanker's generator ranked over the full
catalogue by the exact log-probability of every item's semantic-ID path."""
