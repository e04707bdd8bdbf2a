"""An example implicitreg plugin: the study ``gd-min-norm`` (see :mod:`gd_min_norm.study`)."""
