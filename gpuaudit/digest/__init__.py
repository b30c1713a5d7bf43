"""File digests: per-file partial sums of the report's definitions, stored in the file itself.

Every gpu and engine file the store writes carries, in its Parquet key-value metadata, the
sums the report would compute from its rows (:mod:`~gpuaudit.digest.gpu`,
:mod:`~gpuaudit.digest.engine`), with the default thresholds. The digest is written in the
same atomic rename as the rows it describes, so it can never be stale. A report whose
window contains the whole file and whose thresholds are the defaults reads the digest (from
the raw footer bytes, :mod:`~gpuaudit.digest.footer`) instead of the rows; any other file
(window edges, other thresholds, files without a digest, such as those of other writers) is
read row by row, and the two kinds of part combine exactly (a test checks both paths give
the same report).
"""
