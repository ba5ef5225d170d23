"""``progreg apply``: a registration's transform applied to an image, a label map or points."""

from __future__ import annotations

from ..core.atomic import write_csv
from ..core.errors import InputError
from ..core.grid import Grid
from ..core.itk_fields import read_transform
from ..io.images import read_image, write_image
from ..io.landmarks import read_landmarks, write_markups_json
from ..registration.apply import points_to_fixed, resample_image, resample_label_map

#: Files read as points (by their names); anything else is an image.
POINT_SUFFIXES = (".mrk.json", ".fcsv", ".txt", ".csv", ".pts")
POINT_OUTPUTS = (".mrk.json", ".csv")
IMAGE_OUTPUTS = (".nrrd", ".nii.gz", ".nii", ".mha")


def _is_points(path: str) -> bool:
    return str(path).lower().endswith(POINT_SUFFIXES)


def cmd_apply(args) -> int:
    transform = read_transform(args.transform)
    if _is_points(args.input):
        if not str(args.out).lower().endswith(POINT_OUTPUTS):
            raise InputError(f"--out {args.out}: points are written as {' or '.join(POINT_OUTPUTS)}")
        landmarks = read_landmarks(args.input)
        if landmarks.in_voxels and args.reference is None:
            raise InputError(f"{args.input}: voxel indices; give the image they index as --reference")
        grid = Grid.from_image(read_image(args.reference, what="--reference")) if landmarks.in_voxels else None
        moving = landmarks.to_lps(grid=grid)
        fixed = points_to_fixed(transform, moving, labels=landmarks.labels)
        if str(args.out).lower().endswith(".csv"):
            write_csv(args.out, [{"label": label, **{k: f"{v:.4f}" for k, v in zip("lps", p)}}
                                 for label, p in zip(landmarks.labels, fixed)])
        else:
            write_markups_json(args.out, fixed, landmarks.labels)
        print(f"{len(fixed)} points carried from the moving image to the fixed image: {args.out}")
        return 0
    if args.reference is None:
        raise InputError("--reference: give the image whose grid the result takes (the fixed image, say)")
    if not str(args.out).lower().endswith(IMAGE_OUTPUTS):
        raise InputError(f"--out {args.out}: unknown image format (use {', '.join(IMAGE_OUTPUTS)})")
    image = read_image(args.input, what="INPUT")
    reference = read_image(args.reference, what="--reference")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{args.input}: {image.GetNumberOfComponentsPerPixel()} components per voxel; give a scalar "
                         "image or label map")
    if args.labels:
        out = resample_label_map(image, transform, reference, smooth=args.labels == "smooth", what=str(args.input))
    else:
        out = resample_image(image, transform, reference, args.interpolation, args.default_value, what=str(args.input))
    write_image(out, args.out)
    print(f"{args.input} on the grid of {args.reference}: {args.out}")
    return 0
