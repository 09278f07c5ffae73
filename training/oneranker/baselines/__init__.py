"""Baselines named for what they are (issue 14): `hstu` = the Step-1 G-Decoder alone with a
next-item head (HSTU), trained and evaluated under the HSTU paper's MovieLens protocol
(`oneranker.data.movielens`); `hstu_study` = the same model on the study's data (its Dataset and
Samples), scored under the study's protocols; `generator_eval` = OneRanker's generator ranked
over the full catalogue by the exact log-probability of every item's semantic-ID path."""
