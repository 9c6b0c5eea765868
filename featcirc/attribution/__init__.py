"""Attribution: SAEs spliced with error nodes, LRP rules, node and edge scores."""
