"""orgsyncd.core.header: column mapping and every file-level header problem of the contract."""

from __future__ import annotations

import pytest

from orgsyncd.core.header import HeaderRules, Issue, Layout, analyse_header
from orgsyncd.errors import FileRejected

LIC = "default_license_learning_proalllanguages"
OTHER = "coach_license"
RULES = HeaderRules(license_types=[LIC, OTHER], default_license=LIC)
STRICT = HeaderRules(license_types=[LIC, OTHER], default_license=LIC, strict_headers=True)
NO_DEFAULT = HeaderRules(license_types=[LIC, OTHER], default_license=None)


def reject(cells: list[str], rules: HeaderRules = RULES) -> FileRejected:
    with pytest.raises(FileRejected) as info:
        analyse_header(cells, rules)
    return info.value


def codes(layout: Layout) -> list[str]:
    return [w.code for w in layout.warnings]


# -- the happy path --------------------------------------------------------------------------


def test_full_header_maps_every_known_column() -> None:
    cells = [
        "preferred_first_name",
        "preferred_last_name",
        "primary_email_address",
        "work_title",
        "unique_user_id",
        f"{LIC}_status",
        f"{OTHER}_status",
        "group/Engineering",
        "group/HR",
    ]
    layout = analyse_header(cells, RULES)
    assert layout.width == 9
    assert layout.email == 2
    assert layout.text == {
        "preferred_first_name": 0,
        "preferred_last_name": 1,
        "work_title": 3,
        "unique_user_id": 4,
    }
    assert layout.statuses == [(5, LIC), (6, OTHER)]
    assert layout.active == -1
    assert layout.groups == [(7, "Engineering"), (8, "HR")]
    assert layout.names == cells
    assert layout.warnings == []
    assert layout.has_license_column


def test_email_only_header_has_no_license_column() -> None:
    layout = analyse_header(["primary_email_address"], RULES)
    assert layout.email == 0
    assert not layout.has_license_column


def test_alias_primary_email() -> None:
    layout = analyse_header(["unique_user_id", "primary_email"], RULES)
    assert layout.email == 1
    assert layout.text == {"unique_user_id": 0}
    assert layout.warnings == []


def test_cells_are_trimmed_and_a_bom_is_dropped() -> None:
    layout = analyse_header(["\ufeffprimary_email_address", "  work_title  "], RULES)
    assert layout.email == 0
    assert layout.text == {"work_title": 1}
    assert layout.names == ["primary_email_address", "work_title"]
    assert layout.warnings == []


def test_group_name_keeps_its_case() -> None:
    layout = analyse_header(["primary_email_address", "group/Sales EMEA"], RULES)
    assert layout.groups == [(1, "Sales EMEA")]
    assert layout.warnings == []


# -- missing / malformed header --------------------------------------------------------------


def test_missing_email_column() -> None:
    error = reject(["unique_user_id", "preferred_first_name"])
    assert error.code == "missing_required_column"
    assert "'primary_email_address'" in error.message
    assert "'primary_email'" in error.message
    assert "'unique_user_id', 'preferred_first_name'" in error.message  # what the header has


@pytest.mark.parametrize(("sep", "word"), [(";", "semicolon"), ("\t", "tab")], ids=["semicolon", "tab"])
def test_semicolon_or_tab_separated_header(sep: str, word: str) -> None:
    cell = sep.join(["primary_email_address", "preferred_first_name", "work_title"])
    error = reject([cell])
    assert error.code == "malformed_csv"
    assert f"{word}-separated" in error.message
    assert "comma" in error.message


def test_semicolon_header_is_reported_even_for_a_strict_tenant() -> None:
    error = reject(["primary_email_address;work_title"], STRICT)
    assert error.code == "malformed_csv"
    assert "semicolon" in error.message


# -- duplicates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "first"),
    [
        (["primary_email_address", "primary_email_address"], 1),
        (["primary_email", "primary_email_address"], 1),
        (["primary_email_address", "Primary_Email"], 1),
        (["primary_email_address", "work_title", "WORK_TITLE"], 2),
        (["primary_email_address", "group/HR", "Group/hr"], 2),
        (["primary_email_address", f"{LIC}_status", f"{LIC.upper()}_STATUS"], 2),
        (["primary_email_address", "active", f"{LIC}_status"], 2),
    ],
    ids=["same", "alias", "alias-case", "case", "group-case", "status-case", "active-is-default"],
)
def test_duplicate_header(cells: list[str], first: int) -> None:
    error = reject(cells)
    assert error.code == "duplicate_header"
    last = len(cells)
    assert f"column {last} {cells[-1]!r} repeats column {first} {cells[first - 1]!r}" in (error.message)


def test_duplicate_header_names_both_columns() -> None:
    error = reject(["work_title", "primary_email", "group/HR", "primary_email_address"])
    assert error.code == "duplicate_header"
    assert "column 4 'primary_email_address' repeats column 2 'primary_email'" in error.message


def test_group_columns_that_differ_only_by_spaces_are_duplicates() -> None:
    error = reject(["primary_email_address", "group/HR", "group/ HR"])
    assert error.code == "duplicate_header"


# -- invalid header / unknown license -------------------------------------------------------


@pytest.mark.parametrize("cell", ["group/", "group/   ", "GROUP/"])
def test_group_column_without_a_name(cell: str) -> None:
    error = reject(["primary_email_address", cell])
    assert error.code == "invalid_header"
    assert "column 2" in error.message
    assert "no group name" in error.message


def test_unknown_license_names_the_column_and_lists_the_tenants_columns() -> None:
    error = reject(["primary_email_address", "gold_license_status"])
    assert error.code == "unknown_license"
    assert "'gold_license_status'" in error.message
    assert "'gold_license'" in error.message
    assert f"{LIC}_status, {OTHER}_status" in error.message


def test_unknown_license_for_a_tenant_with_no_licenses() -> None:
    error = reject(["primary_email_address", "x_status"], HeaderRules([], None))
    assert error.code == "unknown_license"
    assert "license columns are: none" in error.message


def test_active_column_maps_to_the_default_license() -> None:
    layout = analyse_header(["primary_email_address", "active"], RULES)
    assert layout.active == 1
    assert layout.statuses == []
    assert layout.has_license_column
    assert layout.warnings == []


def test_active_column_without_a_default_license_is_unknown_license() -> None:
    error = reject(["primary_email_address", "active"], NO_DEFAULT)
    assert error.code == "unknown_license"
    assert "'active'" in error.message
    assert "default license" in error.message


def test_status_columns_work_without_a_default_license() -> None:
    layout = analyse_header(["primary_email_address", f"{OTHER}_status"], NO_DEFAULT)
    assert layout.statuses == [(1, OTHER)]


# -- warnings --------------------------------------------------------------------------------


def test_unknown_column_is_a_warning_and_ignored() -> None:
    layout = analyse_header(["primary_email_address", "department", "work_title"], RULES)
    assert layout.warnings == [
        Issue("warning", "unknown_column", "column 2 'department' is not a roster column; ignored")
    ]
    assert layout.text == {"work_title": 2}
    assert layout.names[1] == "department"


@pytest.mark.parametrize(
    ("cell", "canonical"),
    [
        ("Primary_Email_Address", "primary_email_address"),
        ("PRIMARY_EMAIL", "primary_email"),
        ("Work_Title", "work_title"),
        ("Active", "active"),
        (f"{LIC.upper()}_STATUS", f"{LIC}_status"),
        ("Group/HR", "group/HR"),
    ],
)
def test_case_only_match_is_a_header_case_warning(cell: str, canonical: str) -> None:
    cells = ["primary_email_address", cell] if "EMAIL" not in cell.upper() else [cell]
    layout = analyse_header(cells, RULES)
    assert codes(layout) == ["header_case"]
    assert repr(cell) in layout.warnings[0].message
    assert repr(canonical) in layout.warnings[0].message
    assert layout.warnings[0].outcome == "warning"


def test_group_name_case_is_free() -> None:
    layout = analyse_header(["primary_email_address", "group/hr", "group/Sales"], RULES)
    assert layout.warnings == []


def test_case_matched_columns_still_work() -> None:
    layout = analyse_header(["Primary_Email", "WORK_TITLE", "Group/HR"], RULES)
    assert layout.email == 0
    assert layout.text == {"work_title": 1}
    assert layout.groups == [(2, "HR")]
    assert codes(layout) == ["header_case", "header_case", "header_case"]


@pytest.mark.parametrize(
    ("cells", "fragment"),
    [
        (["Primary_Email_Address"], "'Primary_Email_Address'"),
        (["primary_email_address", "department"], "'department'"),
    ],
    ids=["header_case", "unknown_column"],
)
def test_strict_headers_turns_warnings_into_invalid_header(cells: list[str], fragment: str) -> None:
    error = reject(cells, STRICT)
    assert error.code == "invalid_header"
    assert fragment in error.message
    assert "strict_headers" in error.message


def test_strict_headers_accepts_a_clean_header() -> None:
    layout = analyse_header(["primary_email_address", "work_title", "group/HR"], STRICT)
    assert layout.warnings == []


@pytest.mark.parametrize("rules", [RULES, STRICT], ids=["lenient", "strict"])
def test_results_file_columns_are_ignored_silently(rules: HeaderRules) -> None:
    cells = ["row", "Outcome", "CODE", "message", "primary_email_address", "work_title"]
    layout = analyse_header(cells, rules)
    assert layout.warnings == []
    assert layout.email == 4
    assert layout.text == {"work_title": 5}
    assert layout.width == 6


def test_error_precedence_missing_email_before_strict_warning() -> None:
    error = reject(["department"], STRICT)
    assert error.code == "missing_required_column"


# -- hostile and look-alike headers --------------------------------------------------------------


@pytest.mark.parametrize("invisible", ["\u200b", "\u200d", "\u2060", "\u00ad", "\u200e", "\ufeff"])
def test_invisible_characters_do_not_make_a_new_column(invisible: str) -> None:
    error = reject(["primary_email_address", f"primary_{invisible}email_address"])
    assert error.code == "duplicate_header"
    assert "column 2" in error.message and "column 1" in error.message


def test_a_column_with_invisible_characters_is_matched_with_a_warning() -> None:
    layout = analyse_header(["primary_email_address\u200b ", "work_title"], RULES)
    assert layout.email == 0
    assert codes(layout) == ["invisible_characters"]
    assert "U+200B ZERO WIDTH SPACE" in layout.warnings[0].message
    assert reject(["primary_email_address\u200b"], STRICT).code == "invalid_header"


def test_a_look_alike_column_is_unknown_and_the_warning_names_the_character() -> None:
    layout = analyse_header(["primary_email_address", "work_tit\u0435"], RULES)  # Cyrillic е
    assert codes(layout) == ["unknown_column"]
    assert "U+0435 CYRILLIC SMALL LETTER IE" in layout.warnings[0].message


def test_a_look_alike_email_column_is_named_in_the_missing_column_error() -> None:
    error = reject(["preferred_first_name", "\uff50rimary_email_address"])  # fullwidth p
    assert error.code == "missing_required_column"
    assert "U+FF50 FULLWIDTH LATIN SMALL LETTER P" in error.message


def test_too_many_columns_fail_the_file_before_any_warning_is_built() -> None:
    error = reject(["primary_email_address", *(f"c{i}" for i in range(2000))])
    assert error.code == "invalid_header"
    assert "2,001 columns" in error.message and "2,000" in error.message


def test_too_many_group_columns_fail_the_file() -> None:
    assert analyse_header(["primary_email_address", *(f"group/g{i}" for i in range(500))], RULES)
    error = reject(["primary_email_address", *(f"group/g{i}" for i in range(501))])
    assert error.code == "invalid_header" and "501 group/ columns" in error.message
