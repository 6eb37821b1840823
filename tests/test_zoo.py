"""The zoo: reference block definitions, name lookup, unknown names."""
import pytest

from search_space import ArchSpec, BlockSpec, SpecError, zoo

B0_TF = ["r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
         "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
         "r1_k3_s11_e6_i192_o320_se0.25"]
A1_TF = ["r1_k3_s11_e1_i32_o16_noskip", "r2_k3_s22_e6_i16_o24", "r3_k5_s22_e3_i24_o40_se0.25",
         "r4_k3_s22_e6_i40_o80", "r2_k3_s11_e6_i80_o112_se0.25", "r3_k5_s22_e6_i112_o160_se0.25",
         "r1_k3_s11_e6_i160_o320"]


def test_names():
    assert set(zoo.names()) == {"efficientnet-b0", "mnasnet-a1"}


@pytest.mark.parametrize("alias", ["efficientnet-b0", "EfficientNet_B0", " efficientnet_b0 "])
def test_aliases(alias):
    assert zoo.get(alias) == zoo.get("efficientnet-b0")


def test_b0_matches_the_tensorflow_reference():
    b0 = zoo.get("efficientnet-b0")
    assert b0.blocks == tuple(BlockSpec.from_tf_string(s) for s in B0_TF)
    assert b0.to_tf_strings() == B0_TF
    assert (b0.stem_channels, b0.head_channels, b0.resolution, b0.num_classes) == (32, 1280, 224, 1000)
    assert (b0.activation, b0.dropout, b0.drop_connect) == ("swish", 0.2, 0.2)
    assert b0.num_layers == 16 and b0.total_stride == 32


def test_mnasnet_a1_matches_the_tensorflow_reference():
    a1 = zoo.get("mnasnet-a1")
    assert a1.blocks == tuple(BlockSpec.from_tf_string(s) for s in A1_TF)
    assert (a1.stem_channels, a1.head_channels, a1.activation, a1.dropout) == (32, 1280, "relu", 0.2)
    assert not a1.blocks[0].skip
    assert [b.se_ratio > 0 for b in a1.blocks].count(True) == 3  # "SE in 3 stages"


@pytest.mark.parametrize("name", ["efficientnet-b0", "mnasnet-a1"])
def test_zoo_specs_round_trip_through_yaml(name, tmp_path):
    spec = zoo.get(name)
    spec.save(tmp_path / "s.yaml")
    assert ArchSpec.load(tmp_path / "s.yaml") == spec


def test_unknown_name_names_the_known_ones():
    with pytest.raises(SpecError) as info:
        zoo.get("efficientnet-b9")
    msg = str(info.value)
    assert "efficientnet-b9" in msg and "efficientnet-b0" in msg and "mnasnet-a1" in msg
