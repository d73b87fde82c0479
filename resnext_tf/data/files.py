"""Image files named on a command line: files as given, folders searched recursively.

predict reads the images it classifies through `find_images`, and the INT8 export its
calibration images from a plain folder the same way (`resnext_tf.data.calibration`).
"""

import os

from resnext_tf.data.config import IMAGE_EXTENSIONS


def find_images(paths):
    """The image files named by `paths`: files as given, folders searched recursively.

    Inside folders, only names ending in IMAGE_EXTENSIONS (any case) are taken, and hidden
    entries and symbolic links are passed over.

    Returns:
      (files, problems): the files in order (a folder's sorted), and (path, reason) for each
      path that does not exist.
    """
    files, problems = [], []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [
                    os.path.join(root, name)
                    for name in names
                    if name.lower().endswith(IMAGE_EXTENSIONS)
                    and not name.startswith(".")
                    and not os.path.islink(os.path.join(root, name))
                ]
            files += sorted(found)
        elif os.path.exists(path):
            files.append(path)
        else:
            problems.append((path, "no such file or folder"))
    return files, problems
