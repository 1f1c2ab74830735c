"""Tests of hf_hybridcl; import shared helpers with `from tests.conftest import ...`."""
