"""Training side (the ``train`` extra): datasets, timm / ultralytics training, ONNX export.

Nothing in the node runtime imports this package; it needs torch, timm and ultralytics
(AGPL-3.0, imported only here). ``hipnode train triage|detector|morphology`` lives in ``cli``.
"""
