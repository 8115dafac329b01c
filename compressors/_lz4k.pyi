# The compiled twin of compressors/lz4k.py (compressors/_lz4k.pyx): same API.
MAX_INPUT_SIZE: int
MAX_ACCELERATION: int

def compress(src: bytes | bytearray | memoryview, acceleration: int = 1) -> bytes: ...
