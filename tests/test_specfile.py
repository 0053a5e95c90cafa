"""Spec files: parsing, defaults, schedules and every error naming the file and key."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest

from convgen.errors import SpecError, SpecFileError
from convgen.schedule import Schedule
from convgen.spec import ConvSpec
from convgen.specfile import SpecEntry, load_specfile, load_specfiles, parse_specfile

SPECS = Path(__file__).resolve().parent.parent / "specs"
SPEC_FILES = sorted(SPECS.glob("*.toml"))

MINIMAL = """
[[conv]]
input_shape = [1, 2, 8, 8]
out_channels = 4
"""


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> SpecFileError:
    path = write(tmp_path, text)
    with pytest.raises(SpecFileError) as info:
        load_specfile(path)
    assert str(path) in str(info.value)
    return info.value


# -- the shipped spec files -----------------------------------------------------------------

def test_spec_files_exist():
    names = {p.name for p in SPEC_FILES}
    assert {"seeds.toml", "resnet18.toml", "depthwise.toml", "dilated1d.toml", "conv3d.toml",
            "transposed.toml"} <= names


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_every_spec_file_loads(path):
    entries = load_specfile(path)
    assert entries
    for entry in entries:
        assert isinstance(entry, SpecEntry)
        assert isinstance(entry.spec, ConvSpec)
        assert entry.path == str(path)
        assert entry.spec.batch == 1
        if entry.schedule is not None:
            entry.schedule.resolve(entry.spec)
    assert len({e.name for e in entries}) == len(entries)


def test_names_unique_across_shipped_files():
    entries = load_specfiles(SPEC_FILES, unique=True)
    assert len({e.name for e in entries}) == len(entries)


def test_seeds_shapes():
    out = {e.name: e.spec.output_shape for e in load_specfile(SPECS / "seeds.toml")}
    assert out["signal7_mask5_same"] == (1, 1, 7)
    assert out["signal7_mask5_valid"] == (1, 1, 3)
    assert out["image5_k3_valid"] == (1, 1, 3, 3)
    assert out["image5_k3_pad1"] == (1, 1, 5, 5)
    assert out["rgb5_bank2"] == (1, 2, 5, 5)
    assert out["image5_k3_true_full"] == (1, 1, 7, 7)
    specs = {e.name: e.spec for e in load_specfile(SPECS / "seeds.toml")}
    assert specs["rgb5_bank2"].weight_shape == (2, 3, 3, 3)
    assert specs["image5_k3_true_full"].flip
    assert any(s.stride != (1,) * s.ndim for s in specs.values())
    assert any(s.dilation != (1,) * s.ndim for s in specs.values())


def test_resnet18_layers():
    specs = {e.name: e.spec for e in load_specfile(SPECS / "resnet18.toml")}
    assert len(specs) == 11
    conv1 = specs["resnet18_conv1"]
    assert conv1.input_shape == (1, 3, 224, 224)
    assert conv1.output_shape == (1, 64, 112, 112)
    assert conv1.padding == ((3, 3), (3, 3))
    assert not any(s.bias for s in specs.values())
    outs = sorted({(s.out_channels, s.output_spatial) for s in specs.values()})
    assert outs == [(64, (56, 56)), (64, (112, 112)), (128, (28, 28)), (256, (14, 14)),
                    (512, (7, 7))]
    for spec in specs.values():  # torchvision: pad = k // 2
        assert spec.padding == ((spec.kernel_size[0] // 2,) * 2,) * 2
    assert len({s.key() for s in specs.values()}) == 11  # distinct layers


def test_other_shipped_files():
    dw = load_specfile(SPECS / "depthwise.toml")
    assert all(e.spec.groups == e.spec.in_channels == e.spec.out_channels for e in dw)
    assert all(e.spec.activation == "relu6" for e in dw)
    d1 = load_specfile(SPECS / "dilated1d.toml")
    assert d1[0].spec.input_shape == (1, 32, 1024) and d1[0].spec.dilation == (4,)
    assert d1[0].spec.output_shape == (1, 32, 1024)
    c3 = load_specfile(SPECS / "conv3d.toml")
    assert c3[0].spec.output_shape == (1, 16, 8, 16, 16)
    assert c3[0].schedule == Schedule(tile_co=8, tile_spatial=(1, 4, 16), threads=1)
    tr = {e.name: e.spec for e in load_specfile(SPECS / "transposed.toml")}
    assert all(s.transposed for s in tr.values())
    assert tr["dcgan_up_64_32"].output_shape == (1, 32, 32, 32)
    assert any(s.output_padding != (0, 0) for s in tr.values())


# -- parsing ---------------------------------------------------------------------------------

def test_minimal_file_defaults(tmp_path):
    (entry,) = load_specfile(write(tmp_path, MINIMAL))
    spec = ConvSpec(input_shape=(1, 2, 8, 8), out_channels=4)
    assert entry.spec == spec
    assert entry.name == spec.name
    assert entry.schedule is None


def test_single_conv_table(tmp_path):
    (entry,) = load_specfile(write(tmp_path, """
        [conv]
        name = "one"
        input_shape = [1, 1, 7]
        out_channels = 1
        kernel_size = 5
        padding = "same"
    """))
    assert entry.name == "one"
    assert entry.spec.output_shape == (1, 1, 7)


def test_parse_specfile_from_text():
    (entry,) = parse_specfile(MINIMAL, "inline.toml")
    assert entry.path == "inline.toml"


def test_all_fields(tmp_path):
    (entry,) = load_specfile(write(tmp_path, """
        [[conv]]
        name = "everything"
        input_shape = [2, 4, 9, 10]
        out_channels = 6
        kernel_size = [3, 2]
        stride = [2, 1]
        padding = [[1, 0], 2]
        padding_mode = "reflect"
        dilation = [1, 2]
        groups = 2
        bias = false
        activation = "relu"
        flip = true
        dtype = "float64"
    """))
    spec = entry.spec
    assert spec.kernel_size == (3, 2) and spec.stride == (2, 1)
    assert spec.padding == ((1, 0), (2, 2))
    assert spec.padding_mode == "reflect" and spec.dilation == (1, 2)
    assert spec.groups == 2 and not spec.bias and spec.flip and spec.dtype == "float64"


@pytest.mark.parametrize("padding, pairs", [
    ("1", ((1, 1), (1, 1))),
    ("[1, 2]", ((1, 1), (2, 2))),
    ("[[0, 1], [2, 3]]", ((0, 1), (2, 3))),
    ('"valid"', ((0, 0), (0, 0))),
    ('"same"', ((1, 1), (1, 1))),
    ('"full"', ((2, 2), (2, 2))),
])
def test_padding_forms(tmp_path, padding, pairs):
    (entry,) = load_specfile(write(tmp_path, f"""
        [[conv]]
        input_shape = [1, 1, 6, 6]
        out_channels = 1
        kernel_size = 3
        padding = {padding}
    """))
    assert entry.spec.padding == pairs


@pytest.mark.parametrize("lines, name, args", [
    ('activation = "relu"', "relu", ()),
    ('activation = "leaky_relu"', "leaky_relu", (0.01,)),
    ('activation = ["leaky_relu", 0.1]', "leaky_relu", (0.1,)),
    ('activation = "clip"\nactivation_args = [0.0, 6.0]', "clip", (0.0, 6.0)),
    ('activation = "clip"\nactivation_args = [0, 6]', "clip", (0.0, 6.0)),
    ('activation = ["elu", 0.5]', "elu", (0.5,)),
    ('activation = "none"', None, ()),
    ("", None, ()),
])
def test_activation_forms(tmp_path, lines, name, args):
    (entry,) = load_specfile(write(tmp_path, MINIMAL + lines + "\n"))
    assert entry.spec.activation == name
    assert entry.spec.activation_args == args


# -- schedules -------------------------------------------------------------------------------

def test_file_wide_and_per_conv_schedules(tmp_path):
    entries = load_specfile(write(tmp_path, """
        [schedule]
        tile_co = 2

        [[conv]]
        name = "a"
        input_shape = [1, 2, 8, 8]
        out_channels = 4

        [[conv]]
        name = "b"
        input_shape = [1, 2, 8, 8]
        out_channels = 4
        [conv.schedule]
        tile_co = 4
        tile_spatial = [2, 8]
        threads = 2
    """))
    assert entries[0].schedule == Schedule(tile_co=2)
    assert entries[1].schedule == Schedule(tile_co=4, tile_spatial=(2, 8), threads=2)


def test_per_conv_schedule_replaces_file_wide_whole(tmp_path):
    (entry,) = load_specfile(write(tmp_path, """
        [schedule]
        tile_co = 2
        threads = 4
        [[conv]]
        input_shape = [1, 2, 8, 8]
        out_channels = 4
        [conv.schedule]
        tile_co = 1
    """))
    assert entry.schedule == Schedule(tile_co=1, threads=1)


def test_no_schedule_is_none(tmp_path):
    assert all(e.schedule is None for e in load_specfile(write(tmp_path, MINIMAL)))


# -- names -----------------------------------------------------------------------------------

def test_default_names_made_unique(tmp_path):
    entries = load_specfile(write(tmp_path, MINIMAL * 3))
    base = entries[0].spec.name
    assert [e.name for e in entries] == [base, f"{base}_2", f"{base}_3"]


def test_default_name_avoids_explicit_names(tmp_path):
    base = ConvSpec(input_shape=(1, 2, 8, 8), out_channels=4).name
    entries = load_specfile(write(tmp_path, MINIMAL + MINIMAL + f'name = "{base}"\n'))
    assert [e.name for e in entries] == [f"{base}_2", base]


def test_duplicate_names(tmp_path):
    err = error_of(tmp_path, MINIMAL + 'name = "same"\n' + MINIMAL + 'name = "same"\n')
    assert err.field == "conv[1].name"
    assert "conv[1].name='same'" in str(err) and "unique" in str(err)


@pytest.mark.parametrize("name", ["1abc", "has-dash", "has space", "", "dot.ted", "ünï"])
def test_bad_names(tmp_path, name):
    err = error_of(tmp_path, MINIMAL + f'name = "{name}"\n')
    assert err.field == "conv[0].name"
    assert "[A-Za-z_][A-Za-z0-9_]*" in str(err)


def test_name_must_be_string(tmp_path):
    err = error_of(tmp_path, MINIMAL + "name = 3\n")
    assert err.field == "conv[0].name" and "must be a string" in str(err)


def test_duplicate_names_across_files(tmp_path):
    a = write(tmp_path, MINIMAL + 'name = "n"\n', "a.toml")
    b = write(tmp_path, MINIMAL + 'name = "n"\n', "b.toml")
    with pytest.raises(SpecFileError) as info:
        load_specfiles([a, b])
    assert str(a) in str(info.value) and str(b) in str(info.value)
    assert len(load_specfiles([a, b], unique=False)) == 2


# -- errors ----------------------------------------------------------------------------------

def test_error_message_format(tmp_path):
    path = write(tmp_path, MINIMAL * 2 + MINIMAL + "stride = 0\n")
    with pytest.raises(SpecFileError) as info:
        load_specfile(path)
    assert str(info.value) == f"{path}: conv[2].stride=0: must be >= 1"
    assert isinstance(info.value, SpecError) and isinstance(info.value, ValueError)
    assert info.value.path == str(path)


@pytest.mark.parametrize("line, key, words", [
    ("stride = 0", "conv[0].stride", "must be >= 1"),
    ("stride = 1.5", "conv[0].stride", "int"),
    ("stride = [1, 1.5]", "conv[0].stride", "integer"),
    ("stride = [1, 2, 3]", "conv[0].stride", "2 ints"),
    ('kernel_size = "three"', "conv[0].kernel_size", "int"),
    ('padding = "half"', "conv[0].padding", "valid"),
    ('padding = -1', "conv[0].padding", ">= 0"),
    ('padding_mode = "mirror"', "conv[0].padding_mode", "zeros"),
    ("groups = 3", "conv[0].groups", "divide"),
    ('bias = "yes"', "conv[0].bias", "True or False"),
    ('dtype = "float16"', "conv[0].dtype", "float32"),
    ('activation = "swish"', "conv[0].activation", "relu"),
    ('activation = "clip"', "conv[0].activation_args", "2 arguments"),
    ("output_padding = 1", "conv[0].output_padding", "transposed"),
    ("kernel_size = 20", "conv[0].kernel_size", "empty"),
    ("colour = 3", "conv[0].colour", "unknown key"),
])
def test_spec_errors_name_key(tmp_path, line, key, words):
    err = error_of(tmp_path, MINIMAL + line + "\n")
    assert err.field == key
    assert f"{key}=" in str(err)
    assert words in str(err)


def test_missing_required_field(tmp_path):
    err = error_of(tmp_path, "[[conv]]\ninput_shape = [1, 2, 8, 8]\n")
    assert err.field == "conv[0].out_channels" and "required" in str(err)


def test_wrong_type_input_shape(tmp_path):
    err = error_of(tmp_path, '[[conv]]\ninput_shape = "1x2x8x8"\nout_channels = 4\n')
    assert err.field == "conv[0].input_shape"


def test_single_table_prefix(tmp_path):
    err = error_of(tmp_path, "[conv]\ninput_shape = [1, 2, 8, 8]\nout_channels = 0\n")
    assert err.field == "conv.out_channels"


@pytest.mark.parametrize("text, key, words", [
    ("[schedule]\ntile_co = 0\n" + MINIMAL, "schedule.tile_co", ">= 1"),
    ("[schedule]\ntile_size = 4\n" + MINIMAL, "schedule.tile_size", "not a Schedule field"),
    ("[schedule]\ntile_spatial = [4]\n" + MINIMAL, "schedule.tile_spatial", "conv[0]"),
    ("schedule = 4\n" + MINIMAL, "schedule", "table"),
    (MINIMAL + "[conv.schedule]\ntile_co = 0\n", "conv[0].schedule.tile_co", ">= 1"),
    (MINIMAL + "[conv.schedule]\nthreads = 1000\n", "conv[0].schedule.threads", "[1, 256]"),
    (MINIMAL + "[conv.schedule]\ntile_spatial = [4]\n", "conv[0].schedule.tile_spatial",
     "2 entries"),
    (MINIMAL + "[conv.schedule]\ntile_spatial = [\"a\", 1]\n", "conv[0].schedule.tile_spatial",
     "integers"),
    ("[[conv]]\ninput_shape = [1, 64, 64, 64]\nout_channels = 64\n"
     "[conv.schedule]\ntile_co = 64\ntile_spatial = [64, 64]\n",
     "conv[0].schedule.tile_spatial", "accumulators"),
    (MINIMAL + "schedule = 3\n", "conv[0].schedule", "table"),
])
def test_schedule_errors_name_key(tmp_path, text, key, words):
    err = error_of(tmp_path, text)
    assert err.field == key
    assert words in str(err)


@pytest.mark.parametrize("text, key, words", [
    ("", "conv", "no [[conv]] table"),
    ("[schedule]\ntile_co = 2\n", "conv", "no [[conv]] table"),
    ("conv = 3\n", "conv", "array of tables"),
    ("conv = []\n", "conv", "at least one"),
    ("conv = [1, 2]\n", "conv[0]", "table"),
    ("version = 1\n" + MINIMAL, "version", "unknown top-level key"),
])
def test_structure_errors(tmp_path, text, key, words):
    err = error_of(tmp_path, text)
    assert err.field == key
    assert words in str(err)


def test_toml_syntax_error(tmp_path):
    err = error_of(tmp_path, "[[conv]]\ninput_shape = [1, 2, 8, 8\nout_channels = 4\n")
    assert "invalid TOML" in str(err)
    assert "line" in str(err)  # tomllib's message gives the position


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(SpecFileError) as info:
        load_specfile(path)
    assert str(info.value) == f"{path}: no such spec file"


def test_directory_is_an_error(tmp_path):
    with pytest.raises(SpecFileError) as info:
        load_specfile(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe[[conv]]\n")
    with pytest.raises(SpecFileError) as info:
        load_specfile(path)
    assert "UTF-8" in str(info.value)


def test_errors_pickle(tmp_path):
    for text in ["", MINIMAL + "stride = 0\n", "[[conv\n"]:
        err = error_of(tmp_path, text)
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err) and str(again) == str(err)
