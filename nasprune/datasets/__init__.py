"""The dataset registry: records (:class:`DatasetInfo`), user datasets added from files, validation.

``nasprune.data.load_dataset(name)`` loads any dataset by name; this package describes and stores them.
"""

from nasprune.datasets.formats import FORMATS, ReadOptions
from nasprune.datasets.record import DatasetInfo, Normalization, SplitPolicy
from nasprune.datasets.store import DatasetStore, check_fits

__all__ = ["FORMATS", "DatasetInfo", "DatasetStore", "Normalization", "ReadOptions", "SplitPolicy", "check_fits"]
