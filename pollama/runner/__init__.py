"""The model runner: a subprocess per loaded model hosting llama.cpp with continuous batching.

``native`` owns llama.cpp's handles, ``engine`` batches requests over one context, ``process`` is the
subprocess's socket server, and ``client`` is the server-side handle the scheduler holds.
"""
