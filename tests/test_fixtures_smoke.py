def test_tiny_llama_runs(tiny_llama):
    import torch

    model, tok = tiny_llama
    ids = tok("Hello world, 你好", return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.loss)
