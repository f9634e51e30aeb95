"""The depth and pose networks (docs/design.md §3): `build_depth_net` for `model.depth`, `make_pose_net` for
`model.pose_encoder`."""

from masksfm.networks.depth import DispNet, ResNetDepthNet, build_depth_net
from masksfm.networks.pose import Downsampled, MirrorMean, PairPoseNet, PoseNet, ResNetPoseNet, VehicleMotion, make_pose_net

__all__ = ["DispNet", "Downsampled", "MirrorMean", "PairPoseNet", "PoseNet", "ResNetDepthNet", "ResNetPoseNet", "VehicleMotion", "build_depth_net",
           "make_pose_net"]
