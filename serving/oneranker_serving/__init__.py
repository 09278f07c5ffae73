"""oneranker_serving: everything a served OneRanker model runs, torch-free.

    config       ServeConfig: per-request defaults and limits
    tables       item tables and generation tables of one model version
    tokenize     request validation and tokenization (the training code path's tokens)
    selection    reference beam search over the semantic-ID trie
    recommender  RequestValidator, Recommender (validate -> generate -> select -> rank)
    artifacts    a rendered model version's files -> validator / recommender
    plans        where a tensorrt repository's plans live (the build writes, TrtRunner reads)
    runners/     engine runners: onnxruntime, torch (exported programs), tensorrt
    triton/      the Python models' logic, with pb_utils injected
    local_server the tritonserver launcher (nvidia-pytriton wheel) for CPU hosts and tests
    triton_install  the wheel's tritonserver binary, libraries, Python backend and stubs, located

Only `runners/torch.py` imports torch, and only when the torch engine or DLPack is used (and
`runners/tensorrt.py`, beside TensorRT).
"""
