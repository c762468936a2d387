""" Benchmarks of timm-resattn against timm's ResNet peers: ``python -m benchmarks.run --help``. """
