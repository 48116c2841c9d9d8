"""Black-box conformance tests of the outside contract (/work/shared/contract.md)."""
