"""Model runtime: onnxruntime sessions, preprocessing, triage and detector decoding.

Only onnxruntime, numpy and OpenCV are used here — never torch or ultralytics — so the node
installs without the ``train`` extra. ``manifest`` describes a model, ``session`` opens it with
the configured provider, ``preprocess`` turns 0..1 images into network input, ``nms``,
``triage`` and ``detector`` turn network output into ``node.domain`` answers.
"""
