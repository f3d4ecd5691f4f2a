"""A synthetic street-scene dataset in exact Cityscapes layout, so the workflow runs without downloads.

Each frame is first a list of labelled polygons (the `*_gtFine_polygons.json`, the single source of
truth); the photo is rendered from those polygons and `*_gtFine_labelIds.png` /
`*_gtFine_instanceIds.png` are drawn from the json by cityscapesscripts itself. Scenes follow a
street in perspective: sky, buildings, road and sidewalks meeting at a vanishing point, terrain,
trees, walls, fences, poles with traffic lights and signs, vehicles, persons and riders, plus group
labels (cargroup, persongroup, bicyclegroup), void labels (ego vehicle, static, dynamic, ground,
parking, rail track, guard rail, polegroup), license plates and deleted objects. Each class has its
own colour family and texture (appearance.py); the frame gets lighting, blur and sensor noise. The
scenes are dense and the small classes (poles, lights, signs, persons, two-wheelers) large enough
for SegFormer's 1/4-resolution output, so that a b0 trained from scratch for 300 iterations learns
all 19 classes (val mIoU about 0.59). Every train class appears in every split: each frame features
a rotating share of the 15 classes that are not in every scene, and a frame whose features ended up
hidden is drawn again from the next random state.

Modules, each importing only those before it: classes (which classes, and which a frame shows),
geometry (street perspective, outlines, background), placers (scene elements, scene_objects),
appearance (colours, textures, noise), render (the photo), writer (frames, files, generate_demo).
"""

from segformer.demo.classes import FEATURED_CLASSES, TRAIN_CLASSES, base_label
from segformer.demo.placers import scene_objects
from segformer.demo.writer import DEFAULT_CITIES, MANIFEST_NAME, generate_demo

__all__ = ["DEFAULT_CITIES", "FEATURED_CLASSES", "MANIFEST_NAME", "TRAIN_CLASSES", "base_label", "generate_demo",
           "scene_objects"]
