"""Persona's device runtime without torch: the exported ONNX graphs on onnxruntime, edits and prototype
snapshots read with numpy (``pip install 'persona-rec[device]'``; docs/device_runtime.md).

Imports nothing of ours and neither torch nor RecBole (``tests/persona_device/test_imports.py``).
"""
