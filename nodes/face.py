"""Face nodes: Loopy Face Crop (find the face, crop a square around it) and Loopy Paste Back (put the animated
crop back into the original picture, colour-matched, with a feathered seam). Thin adapters over `loopy_core.face`.

`LOOPY_CROP` is a `loopy_core.face.CropInfo`: where the square lies in the original image (pixels) and whether a
face was found (else it is the centre square).
"""

from __future__ import annotations

from ._comfy import output_device
from ._types import CATEGORY

CROP = "LOOPY_CROP"


class LoopyFaceCrop:
    DESCRIPTION = ("Finds the largest face in the image (OpenCV Haar detector) and crops a square around it with "
                   "room for head motion, resized for the model. Without a face it uses the centre square.")
    CATEGORY = CATEGORY
    FUNCTION = "crop"
    RETURN_TYPES = ("IMAGE", CROP)
    RETURN_NAMES = ("crop", "crop_info")
    OUTPUT_TOOLTIPS = ("The square face crop (connect it to the sampler's reference).",
                       "Where the crop lies in the image: connect it to Loopy Paste Back.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The photo (any size; batch item 0 is used)."}),
                "size": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8,
                                 "tooltip": "Side of the output crop in pixels (the model's resolution, 512 for "
                                            "SD1.5 models)."}),
                "margin": ("FLOAT", {"default": 1.8, "min": 1.0, "max": 4.0, "step": 0.05,
                                     "tooltip": "Crop side as a multiple of the face's size: room for head motion."}),
            },
        }

    def crop(self, image, size, margin):
        from loopy_core.face import crop, face_crop_info

        original = image[0]
        info = face_crop_info(original, margin)
        return (crop(original, info, size)[None].to(output_device()), info)


class LoopyPasteBack:
    DESCRIPTION = ("Pastes animated face crops back into the original image at the place Loopy Face Crop took them "
                   "from, colour-matched to the photo around the crop and with a feathered seam: a video of the "
                   "full picture.")
    CATEGORY = CATEGORY
    FUNCTION = "paste"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The frames at the original image's size (rounded down to even with even_size).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The original photo given to Loopy Face Crop (batch item 0 is used)."}),
                "frames": ("IMAGE", {"tooltip": "The animated square crops (e.g. from Loopy Long Video)."}),
                "crop_info": (CROP, {"tooltip": "From Loopy Face Crop: where the crop goes."}),
                "feather": ("FLOAT", {"default": 0.15, "min": 0.0, "max": 0.5, "step": 0.01,
                                      "tooltip": "Width of the blended seam as a fraction of the crop side."}),
                "colour_match": ("BOOLEAN", {"default": True,
                                             "tooltip": "Match the crops' colour to the photo's along the seam "
                                                        "(one estimate for all the frames, so it does not "
                                                        "flicker)."}),
                "even_size": ("BOOLEAN", {"default": True,
                                          "tooltip": "Drop a last odd row or column: H.264 (Save Video) needs an "
                                                     "even width and height."}),
            },
        }

    def paste(self, image, frames, crop_info, feather, colour_match, even_size):
        from loopy_core.face import paste_back

        video = paste_back(image[0], frames, crop_info, feather, match=colour_match)
        if even_size:
            video = video[:, : video.shape[1] // 2 * 2, : video.shape[2] // 2 * 2]
        return (video.to(output_device()),)


NODE_CLASS_MAPPINGS = {"LoopyFaceCrop": LoopyFaceCrop, "LoopyPasteBack": LoopyPasteBack}
NODE_DISPLAY_NAME_MAPPINGS = {"LoopyFaceCrop": "Loopy Face Crop", "LoopyPasteBack": "Loopy Paste Back"}
