"""Activation stores and the `stored` source: the LMDB store (lmdb.py), a folder of .npy shards
(npy.py), a shard store at a URI (shards.py), opening any of them (store.py), and the source
that replays one (source.py, the `stored` kind; its settings in spec.py); declared in
modality.py. Writing one: thresher/harvest/to_store.py.
"""
