"""The Ray executor: the only package that imports ray.

`pipeline.run_ray` starts one `StreamActor` per stream (pump + broadcast log, running the harvest
pool) and the stream's `TrainerActor`s; both wrap the plain classes of `thresher.stream`,
`thresher.harvest` and `thresher.train` and share their choreography with the inline executor
(`thresher.session`).
"""
