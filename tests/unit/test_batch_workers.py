"""Where batch workers go: dealt round the nodes, and a replacement to the node with the fewest."""
from modelpool.management.batch.workers import deal, least_loaded


def test_workers_are_dealt_round_the_nodes_evenly():
    assert deal(5, ["a", "b"]) == ["a", "b", "a", "b", "a"]
    assert deal(1, ["a", "b", "c"]) == ["a"]


def test_a_replacement_goes_to_the_node_with_fewest_workers():
    assert least_loaded(["a", "b"], ["a", "a", "b"]) == "b"
    assert least_loaded(["a", "b"], ["b"]) == "a"
    # workers left on a dead node do not count against alive ones
    assert least_loaded(["a"], ["dead", "dead"]) == "a"
