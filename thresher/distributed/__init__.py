"""The Ray executor: the only package that imports ray.

`pipeline.run_ray` starts one `StreamActor` per stream (the stream's `StreamService` of
thresher/harvest/service.py, with the harvester pool, store budget and placement that need Ray)
and the stream's `TrainerActor`s (a `TrainerSession` reading its stream through Ray). Each is a
module-level class given to `ray.remote` where it starts.
"""
