"""The template miner the journald exporter and bench/loghub.py share: masking, Drain, persistence."""

from __future__ import annotations

import json
import random

import pytest

from exporters import drain
from exporters.drain import WILDCARD, Drain, mask, merge_token, shape, to_generic, token_matches
from exporters.journald import new_miner
from exporters.xid import CATALOG, describe, parse_xid


@pytest.mark.parametrize(("message", "masked"), [
    ("nvidia 0000:3b:00.0: enabling device", "nvidia <PCI>: enabling device"),
    ("NVRM: Xid (PCI:0000:01:00): 79, pid=4242", "NVRM: Xid (PCI:<PCI>): <NUM>, pid=<NUM>"),
    ("job 123e4567-e89b-12d3-a456-426614174000 done", "job <UUID> done"),
    ("from 10.0.0.1 port 5555 ssh2", "from <IP> port <NUM> ssh2"),
    ("peer fe80::1ff:fe23:4567:890a up", "peer <IP> up"),
    ("link 00:1a:2b:3c:4d:5e up at 10:20:30", "link <MAC> up at <NUM>:<NUM>:<NUM>"),
    ("open /var/lib/app/db.sqlite failed: 0xdeadbeef", "open <PATH> failed: <HEX>"),
    ("delete blk_-1 blk_22 blk_333", "delete <NUM>"),
    ("eth0 up, tty2 login, 64 GB free", "eth0 up, tty2 login, <SIZE> free"),
    ("fetch https://example.com/a?b=1 ok", "fetch https://<URL> ok"),
    ("at Mon Jun 10 11:32:15 2005 done", "at <DATETIME> done"),
])
def test_mask(message, masked):
    assert mask(message) == masked


def test_variants_join_one_template_and_different_messages_start_new_ones():
    miner = new_miner()
    first, new = miner.add("Accepted password for alice from 10.0.0.1 port 4000 ssh2")
    assert new
    second, new = miner.add("Accepted password for bob from 10.0.0.2 port 4001 ssh2")
    assert not new and second.id == first.id
    assert second.template == "Accepted password for <*> from <IP> port <NUM> ssh2"
    assert to_generic(second.template) == "Accepted password for <*> from <*> port <*> ssh2"
    other, new = miner.add("Connection closed by 10.0.0.3 port 4002")
    assert new and other.id != first.id
    assert miner.match("Accepted password for carol from 10.9.9.9 port 1 ssh2").id == first.id


def test_tokens_of_a_different_shape_do_not_merge():
    miner = new_miner()
    a, _ = miner.add("session opened for user root by (uid=0)")
    b, new = miner.add("session opened for user root by LOGIN(uid=0)")
    assert new and a.id != b.id
    c, new = miner.add("session opened for user cyrus by (uid=0)")
    assert not new and c.id == a.id


def test_merge_token_keeps_delimited_constant_parts():
    assert merge_token("rhost=a.example.com", "rhost=<IP>") == "rhost=<*>"
    assert merge_token("[foo]", "[bar]") == "[<*>]"
    assert merge_token("alice", "bob") == "<*>"
    assert merge_token("same", "same") == "same"


def test_state_survives_json_and_keeps_ids():
    miner = Drain()
    ids = {m: miner.add(m)[0].id for m in ("disk sda full", "login of user alice succeeded", "cpu 3 hot at 90 C")}
    restored = Drain.from_dict(json.loads(json.dumps(miner.to_dict())))
    assert [c.template for c in restored.clusters] == [c.template for c in miner.clusters]
    again, new = restored.add("login of user bob succeeded")
    assert not new and again.id == ids["login of user alice succeeded"]
    fresh, new = restored.add("a completely different line")
    assert new and fresh.id == max(ids.values()) + 1, "ids are never reused"


def test_clusters_are_capped_least_recently_used_first():
    miner = Drain(max_clusters=2)
    a, _ = miner.add("alpha one")
    b, _ = miner.add("beta two words")
    miner.add("alpha one")
    c, _ = miner.add("gamma three words here")
    assert {x.id for x in miner.clusters} == {a.id, c.id}
    again, new = miner.add("beta two words")
    assert new and again.id not in (a.id, b.id, c.id)


def _word(template: int, position: int) -> str:
    """A letters-only word of its own for each (template, position)."""
    return "".join("abcdefghij"[int(d)] for d in f"{template:04d}") + "klmnopqrst"[position]


def _line(template: int, value: int) -> str:
    # ten tokens, the first two shared: every template lands in one leaf of the tree
    return " ".join(["kernel:", "worker", *(_word(template, j) for j in range(7)), str(value)])


def _shapes_computed_for_probes(monkeypatch, templates: int) -> int:
    miner = new_miner()
    for t in range(templates):
        miner.add(_line(t, t))
    assert len(miner.clusters) == templates
    calls = []
    monkeypatch.setattr(drain, "shape", lambda token: calls.append(token) or shape(token))
    for t in range(10):  # lines of known templates, and lines of new ones, into the crowded leaf
        cluster, new = miner.add(_line(t, 1000 + t))
        assert not new and cluster.template == " ".join(["kernel:", "worker", *(_word(t, j) for j in range(7)), "<NUM>"])
        assert miner.add(_line(5000 + t, 7))[1]
    return len(calls)


def test_work_per_line_does_not_grow_with_the_templates_in_a_leaf(monkeypatch):
    """Comparing a line with every template of its leaf recomputed token shapes for each of them:
    with 400 templates, 40 times the work of 10. The index compares only templates that can match."""
    few = _shapes_computed_for_probes(monkeypatch, 10)
    many = _shapes_computed_for_probes(monkeypatch, 400)
    assert many == few
    assert many <= 10 * 10, "a new template's shapes are computed once, a line's tokens at most once"


def test_the_index_picks_the_cluster_that_comparing_with_every_template_picks():
    """Reference: Drain's rule over all clusters of the leaf (most equal tokens, then most
    wildcards, then the oldest; a differing token of another shape rules a cluster out)."""
    rng = random.Random(5)
    vocabulary = ["open", "close", "user=alice", "user=bob", "rhost=h.example.com", "rhost=", "(uid=0)",
                  "LOGIN(uid=0)", "[foo]", "[bar]", "a<*>", "port", "7", "x", "y"]
    miner = Drain(sim_threshold=0.4)
    for _ in range(800):
        tokens = mask(" ".join(["sshd", "session"] + rng.choices(vocabulary, k=4))).split()
        best, best_key = None, (-1.0, -1)
        for cluster in sorted(miner.clusters, key=lambda c: c.id):
            if len(cluster.tokens) != len(tokens):  # another leaf
                continue
            same = params = 0
            for t, m in zip(cluster.tokens, tokens, strict=True):
                if t == WILDCARD:
                    params += 1
                elif token_matches(t, m):
                    same += 1
                elif shape(t) != shape(m):
                    same = -len(tokens)
                    break
            if (same / len(tokens), params) > best_key:
                best, best_key = cluster, (same / len(tokens), params)
        expected = best.id if best is not None and best_key[0] >= 0.4 else None
        cluster, new = miner.add(" ".join(tokens))
        assert (None if new else cluster.id) == expected


def test_a_state_file_without_leaf_paths_loads():
    miner = Drain()
    first, _ = miner.add("login of user alice succeeded")
    state = miner.to_dict()
    for item in state["clusters"]:
        del item["path"]
    again, new = Drain.from_dict(state).add("login of user bob succeeded")
    assert not new and again.id == first.id


def test_bad_state_is_refused():
    with pytest.raises(ValueError, match="version"):
        Drain.from_dict({"version": 99})


@pytest.mark.parametrize(("line", "pci", "xid"), [
    ("NVRM: Xid (PCI:0000:01:00): 79, pid=1234, name=python3, GPU has fallen off the bus.", "00000000:01:00.0", 79),
    ("NVRM: Xid (0000:3B:00): 13, Graphics SM Warp Exception", "00000000:3b:00.0", 13),
    ("[ 12.3] NVRM: Xid (PCI:0000:af:00.0): 119, pid=5, Timeout waiting for RPC from GSP!", "00000000:af:00.0", 119),
])
def test_parse_xid(line, pci, xid):
    event = parse_xid(line)
    assert event is not None and event.pci_bus_id == pci and event.xid == xid


def test_parse_xid_ignores_other_lines():
    assert parse_xid("NVRM: loading NVIDIA UNIX x86_64 Kernel Module 550.54") is None
    assert parse_xid("NVRM: Xid (PCI:zz): 79") is None


def test_catalog_covers_the_common_codes():
    assert set(CATALOG) >= {13, 31, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 119, 120}
    assert "fallen off the bus" in describe(79)
    assert "catalog" in describe(9999)
