"""The stream between harvest and training, in plain numpy (no torch, no Ray).

  block.py    ActivationBlock, the one type that carries rows between stages
  stats.py    StreamStats: each hook's input scale and decoder-bias estimate
  chunker.py  Chunker: blocks -> held-out rows, stream statistics, fixed-size training chunks
  log.py      BroadcastLog: a bounded log of chunk handles and its seeded mixing schedule
  reader.py   BatchReader: one trainer's walk along the schedule (NotReady / EndOfStream)
  pump.py     Pump: Chunker + BroadcastLog + counters, appending as room frees up
  budget.py   StoreBudget: the object-store share of one stream

What a chunk handle is differs by executor (the rows themselves inline, an object ref on Ray);
the classes here never look inside one.
"""
