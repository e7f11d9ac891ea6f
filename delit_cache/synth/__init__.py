"""Synthetic training data: procedural portraits under HDRI and procedural lighting.

``geometry`` (ray-cast 2.5-D subjects), ``materials`` (skin, hair, cloth), ``environments``
(HDRIs and procedural env maps), ``compose`` (shading, AO, exposure -> ``render_sample``),
``writer`` (``synth``: worker processes -> shards).
"""
