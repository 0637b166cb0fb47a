"""Binary indexes: :class:`BinaryIndex` (exact Hamming search with ids, range search, a
checked file format). ``_binary_index`` is the index, ``_range`` its range search in bounded
memory, ``_mih`` its multi-index route (``method="mih"``), ``_file_format`` the file format
and its checks."""
from ._binary_index import BinaryIndex, id_tensor
from ._file_format import IndexFormatError
from ._mih import SearchStats

__all__ = ["BinaryIndex", "IndexFormatError", "SearchStats", "id_tensor"]
