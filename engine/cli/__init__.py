"""The `stockaj-rules` command line: the rule author's commands and the operator's."""
