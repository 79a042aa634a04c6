"""Grids of runs: a sweep file expanded into cells (``spec``), ``migu sweep`` (``sweep``) and
``migu tune`` (``tune``). Each cell is an ordinary run directory, so a grid resumes cell by cell."""
