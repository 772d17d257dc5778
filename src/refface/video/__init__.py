"""Video clips: reading and writing them (PyAV), face tracks across frames, and measures of steadiness.

This layer knows faces but no models; `refface.restoration.video_restorer` joins it to the photo workflow.
"""
