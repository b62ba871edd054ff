"""Plan and parameter descriptions read from docstrings: numpydoc (bluesky.plans) and Google
(blueapi-style plan modules)."""

from __future__ import annotations

import bluesky.plans as bp
from kubesky_worker.plan_docs import param_docs, summary


def numpydoc_plan(detectors, x, y, *args, num=1, md=None, **kwargs):
    """Scan something.

    More words about it,
    over two lines.

    Parameters
    ----------
    detectors : list
        what to read
    x, y : float
        where to go; the first line
        and the second line

    *args : float
        positions
    num
        how many
    md : dict, optional

    Other Parameters
    ----------------
    **kwargs : dict
        passed on

    Returns
    -------
    msgs : list
        not a parameter
    """
    yield from ()


def test_numpydoc_descriptions_joined_over_lines():
    docs = param_docs(numpydoc_plan)
    assert docs["detectors"] == "what to read"
    assert docs["num"] == "how many"  # a name with no type
    assert docs["md"] == ""  # listed without a description
    assert docs["args"] == "positions" and docs["kwargs"] == "passed on"  # stars dropped


def test_numpydoc_several_names_on_one_line_share_the_description():
    docs = param_docs(numpydoc_plan)
    assert docs["x"] == docs["y"] == "where to go; the first line and the second line"
    assert not [name for name in docs if "," in name or ":" in name]


def test_numpydoc_section_ends_at_the_next_section():
    assert set(param_docs(numpydoc_plan)) == {"detectors", "x", "y", "args", "num", "md", "kwargs"}


def test_numpydoc_of_a_bluesky_plan():
    docs = param_docs(bp.x2x_scan)  # `motor1, motor2 : Positioner` and `start, stop : float`
    assert docs["motor1"] == docs["motor2"] == "The second motor will move half as much as the first"
    assert docs["stop"].startswith("The relative limits of the first motor.")
    assert docs["num"] == "number of steps in the scan"
    assert docs["detectors"] == "list of 'readable' objects"


def google_plan(detectors, motor, *args, **kwargs):
    """Move and read.

    Args:
        detectors (Sequence[Readable]): what to read,
            on two lines
        motor: what to move
            note: an indented line is not a parameter
        *args: extra positions
        **kwargs: passed on

    Returns:
        nothing: not a parameter
    """
    yield from ()


def test_google_descriptions():
    assert param_docs(google_plan) == {
        "detectors": "what to read, on two lines",
        "motor": "what to move note: an indented line is not a parameter",
        "args": "extra positions",
        "kwargs": "passed on",
    }


def test_google_arguments_header():
    def plan(a):
        """Do a.

        Arguments:
            a: the a
        """
        yield from ()

    assert param_docs(plan) == {"a": "the a"}


def test_no_docstring_or_no_parameters_section():
    def bare(a):
        yield from ()

    def prose(a):
        """Parameters are described nowhere here.

        a : int
            not under a Parameters heading
        """
        yield from ()

    assert param_docs(bare) == {} and summary(bare) == ""
    assert param_docs(prose) == {}


def test_summary_is_the_first_paragraph():
    assert summary(numpydoc_plan) == "Scan something."
    assert summary(google_plan) == "Move and read."

    def two_line_summary():
        """First line
        and second line.

        Rest."""

    assert summary(two_line_summary) == "First line\nand second line."


def test_numpydoc_section_first_and_last():
    def plan(a, b):
        """Parameters
        ----------
        a : int
            the a
            Table
            -----
            underlined inside a description
        b : int
            the b

        See Also
        --------
        """
        yield from ()

    assert param_docs(plan) == {"a": "the a Table ----- underlined inside a description", "b": "the b"}

    def ends_with_the_word(a):
        """Look further down for the

        Parameters"""  # a last line, with no underline: no heading

    assert param_docs(ends_with_the_word) == {}


def test_google_section_tolerates_blank_and_stray_lines():
    def plan(a, b):
        """Do it.

        Parameters:
                stray text before any parameter
            a: the a

            b (int): the b
            See the manual.
        """
        yield from ()

    assert param_docs(plan) == {"a": "the a", "b": "the b"}
