"""scripts/probe_side_source.py: the teacher-forced prefixes whose side words tell boxes from image apart."""
import repo_file


def _obj(shape, colour, size, box):
    return {"shape": shape, "colour": colour, "size": size, "box": box}


OBJECTS = [_obj("circle", "red", "small", [100, 120, 180, 200]), _obj("circle", "blue", "large", [600, 500, 900, 800]),
           _obj("star", "green", "small", [400, 40, 460, 100])]


def test_swapped_boxes_flip_the_side_they_show():
    mod = repo_file.load("scripts/probe_side_source.py")
    cases = dict((c, (given, shown)) for c, given, shown in
                 mod.prefix_cases("Is the blue circle left of the star?", "no", OBJECTS))
    true_given, true_shown = cases["true boxes"]
    assert true_given == "the blue circle <box>600,500,900,800</box> and the star <box>400,40,460,100</box> so the blue circle is"
    assert true_shown == "right of"
    swapped_given, swapped_shown = cases["swapped boxes"]
    # the names stay where the question put them; only the coordinates trade places, so the side they show flips
    assert swapped_given == "the blue circle <box>400,40,460,100</box> and the star <box>600,500,900,800</box> so the blue circle is"
    assert swapped_shown == "left of"
    assert cases["blank image"] == cases["true boxes"]  # the image is blanked by the caller
    below = dict((c, s) for c, _, s in mod.prefix_cases("Is the star below the red circle?", "no", OBJECTS))
    assert below == {"true boxes": "above", "swapped boxes": "below", "blank image": "above"}
    assert mod.prefix_cases("Which shape is furthest to the left?", "star", OBJECTS) is None
    assert mod.prefix_cases("Is the circle left of the star?", "yes", OBJECTS) is None  # "circle" names two objects


def test_point_prefixes_swap_and_flip_alike():
    mod = repo_file.load("scripts/probe_side_source.py")
    cases = {c: (given, shown) for c, given, shown in
             mod.prefix_cases("Is the blue circle left of the star?", "no", OBJECTS, places="point")}
    assert cases["true boxes"] == (
        "the blue circle <point>7,6</point> and the star <point>4,0</point> so the blue circle is", "right of")
    assert cases["swapped boxes"] == (
        "the blue circle <point>4,0</point> and the star <point>7,6</point> so the blue circle is", "left of")
