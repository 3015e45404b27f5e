"""The test kit's pytest plugin, as a user's project sees it: a fresh pytest run in its own
directory, the plugin loaded by name, its fixtures working (the broker one starts its own
embedded broker unless KWHEEL_TEST_BOOTSTRAP names one)."""

USER_TEST = """
from confluent_kafka.admin import AdminClient

from kwheel import Computation, Pipeline


class Count(Computation):
    def process_record(self, ctx, record):
        ctx.state["n"] = ctx.state.get("n", 0) + 1


def test_driver(kwheel_driver):
    p = Pipeline("mine")
    p.stream("in", partitions=2, source=True)
    p.computation("count", Count, inputs=["in"])
    d = kwheel_driver(p, wall_clock_ms=0)
    d.send("in", "k", {}, timestamp=1)
    d.send("in", "k", {}, timestamp=2)
    assert d.state("count", "k") == {"n": 2}


def test_broker(kwheel_kafka):
    assert AdminClient({"bootstrap.servers": kwheel_kafka.bootstrap}).list_topics(timeout=10) is not None
"""


def test_a_users_project_gets_the_fixtures(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "kwheel.testing.pytest_plugin", "-p", "no:cacheprovider", "-q", timeout=120
    )
    result.assert_outcomes(passed=2)


def test_without_the_plugin_the_fixtures_are_unknown(pytester):
    pytester.makepyfile(test_user=USER_TEST)
    result = pytester.runpytest_subprocess(
        "-p", "no:kwheel.testing.pytest_plugin", "-p", "no:cacheprovider", "-q", timeout=60
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*fixture 'kwheel_driver' not found*"])
