"""The README's port tables as the socket tests read them: both tables are there, and a row names a socket only by
its port and its process together."""
from __future__ import annotations

from tests.readme_ports import PortRow, table, undocumented


def test_both_tables_are_read_with_their_rows():
    one_machine, cluster = table("One machine"), table("A cluster")
    assert len(one_machine) >= 15 and len(cluster) >= 10
    assert any(row.ports == "6379" and row.processes == ("gcs_server",) for row in cluster)


def test_a_row_matches_its_ports_and_processes_only():
    row = PortRow("10002-19999, 30000", ("ray::",), "workers")
    assert row.matches(10002, "12 ray::ServeReplica:x ray::ServeReplica:x") and row.matches(30000, "ray::X")
    assert not row.matches(20000, "ray::X") and not row.matches(10002, "12 raylet /bin/raylet")
    assert PortRow("any", ("raylet",), "").matches(41234, "7 raylet /x/raylet")


def test_a_socket_no_row_names_is_reported():
    rows = table("One machine")
    sockets = {("127.0.0.1", 6379): "9 gcs_server /ray/gcs_server", ("127.0.0.1", 7777): "10 python3 python3 mine.py",
               ("127.0.0.1", 8404): "11 gcs_server /ray/gcs_server"}
    assert set(undocumented(sockets, rows)) == {("127.0.0.1", 7777), ("127.0.0.1", 8404)}
