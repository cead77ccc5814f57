"""The staircase of a run (one row per plateau visited): computed in the recording layer, which
writes `staircase.csv` at the end of a run (dlnlab.recording.staircase); re-exported here for analysis.

    from dlnlab.analysis.staircase import staircase, StaircaseTolerances
"""
from dlnlab.recording.staircase import (
                                        COLUMNS,
                                        StaircaseTolerances,
                                        format_staircase,
                                        plateau_table,
                                        staircase,
)

__all__ = ["COLUMNS", "StaircaseTolerances", "staircase", "plateau_table", "format_staircase"]
