"""The depth and pose networks (docs/design.md §3): `build_depth_net` for `model.depth`, and `PoseNet`."""

from masksfm.networks.depth import DispNet, ResNetDepthNet, build_depth_net
from masksfm.networks.pose import PairPoseNet, PoseNet, VehicleMotion

__all__ = ["DispNet", "PairPoseNet", "PoseNet", "ResNetDepthNet", "VehicleMotion", "build_depth_net"]
