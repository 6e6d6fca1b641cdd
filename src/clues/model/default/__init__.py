"""The shipped default model (weights, tokenizer and model card live beside this file as package data).

Rebuild it with ``python -m clues.model.pretrain --out src/clues/model/default``; see README.md here.
"""
