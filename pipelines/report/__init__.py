"""The run report, one self-contained HTML page (`page`): its parts, and the look inside a trained
model (`insight`: Grad-CAM and activation maximisation, computed once; `insight_sections`: their HTML)."""
