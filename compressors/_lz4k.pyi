# The compiled twin of compressors/lz4k.py (compressors/_lz4k.pyx): same API.
MAX_INPUT_SIZE: int
MAX_ACCELERATION: int

def compress(src: bytes | bytearray | memoryview, acceleration: int = 1) -> bytes: ...

# Compiled only (the reference decoder is liblz4's, through python-lz4): the
# page a block decodes to, strictly; ValueError for any block it does not take.
def decompress(src: bytes | bytearray | memoryview, size: int) -> bytes: ...
