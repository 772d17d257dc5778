"""`refface serve` end to end: the real server process, driven in headless Chromium by Playwright.

Chromium is Debian's (`.ci/run` installs the `chromium` package); Playwright only drives it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serving import start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a sandboxed CI machine with no network beyond loopback (as the machine notes prescribe).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
    pytest.mark.slow,  # a browser and a server per test
]


@pytest.fixture(scope="module")
def server(tiny_models):
    process, url = start_server("--model", str(tiny_models["refldm"]), "--model", str(tiny_models["composite"]),
                                "--device", "cpu", "--max-upload-mb", "3")  # fmt: skip
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


def test_restore_a_photo_in_the_browser_and_download_it(server, browser, face_photos, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server)
    page.select_option("#method", "composite")
    assert page.input_value("#guidance") == "1.2" and page.is_visible("#lq-guidance")
    page.set_input_files("#photo", str(face_photos["old photo.jpg"]))
    page.wait_for_selector(".face[aria-pressed=true]")
    assert page.locator(".face").count() == 1
    page.set_input_files("#references", [str(face_photos["ref_a.png"]), str(face_photos["ref_b.png"])])
    page.wait_for_function("document.querySelector('.face-person').value === 'Person 1'")
    assert "Person 1 (2 reference(s))" in page.text_content("#people-status")
    page.fill("#steps", "4")
    page.click("#restore")
    page.wait_for_selector("#download", state="visible", timeout=120_000)
    assert page.text_content("#status") == "Done."
    assert page.text_content("#summary") == "1 face(s) restored: face 0 as Person 1 (2 reference(s))."
    assert page.locator("#chosen figure").count() == 2
    page.fill("#slider", "20")
    assert "20%" in page.get_attribute("#after", "style")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    with page.expect_download() as waiting:
        page.click("#download")
    download = waiting.value
    assert download.suggested_filename == "old photo_restored.jpg"  # the upload's own format
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    restored = np.asarray(Image.open(saved).convert("RGB"), dtype=int)
    original = np.asarray(Image.open(face_photos["old photo.jpg"]).convert("RGB"), dtype=int)
    assert restored.shape == original.shape
    change = np.abs(restored - original).sum(axis=2)
    assert (change[:170, 80:260] > 20).mean() > 0.2  # the face changed
    assert change[170:].mean() < 3  # the rest is kept: only the JPEG written again with its own tables moves it
    page.close()


def test_bad_uploads_show_one_sentence_in_the_page(server, browser, face_photos, tmp_path):
    page = browser.new_page()
    page.goto(server)
    page.set_input_files("#photo", str(face_photos["notes.txt"]))
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "notes.txt is not an image format refface can read" in page.text_content("#error")
    assert page.is_disabled("#restore")

    page.set_input_files("#photo", str(face_photos["huge.png"]))
    page.wait_for_function("document.getElementById('error').textContent.includes('pixels')")
    assert "more than the limit of 40,000,000" in page.text_content("#error")

    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(1).bytes(4 * 2**20))
    page.set_input_files("#photo", str(big))
    page.wait_for_function("document.getElementById('error').textContent.includes('MB')")
    assert "photos may be at most 3 MB" in page.text_content("#error")

    # a reference without a face fails the job with a message naming it, and the page can be used again
    page.set_input_files("#photo", str(face_photos["old photo.jpg"]))
    page.wait_for_selector(".face[aria-pressed=true]")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 120, 3), 200, dtype=np.uint8)).save(blank)
    page.set_input_files("#references", [str(blank)])
    page.wait_for_function("document.getElementById('error').textContent.includes('blank.png')", timeout=60_000)
    assert "No face was found in blank.png; use a photo in which the face is upright" in page.text_content("#error")
    page.wait_for_function("!document.getElementById('restore').disabled")
    page.select_option(".face-person", "\u0000skip")
    page.click("#restore")
    assert page.text_content("#error") == "Face 0 is set to be left untouched."
    page.close()


def test_restore_all_faces_of_a_group_photo_each_as_its_own_person(server, browser, group_photos, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server)
    page.wait_for_selector("#method option[value=refldm]", state="attached")
    page.select_option("#method", "refldm")
    page.set_input_files("#photo", str(group_photos["group.jpg"]))
    page.wait_for_function("document.querySelectorAll('.face').length === 2")
    page.fill(".person-name", "Grace")
    page.set_input_files("#references", [str(group_photos["grace_a.jpg"]), str(group_photos["grace_b.jpg"])])
    page.click("#add-person")
    page.locator(".person-name").nth(1).fill("Eileen")
    eileen = [str(group_photos["eileen_a.jpg"]), str(group_photos["eileen_b.jpg"])]
    page.locator(".person-files").nth(1).set_input_files(eileen)
    page.wait_for_function(
        "[...document.querySelectorAll('.face-person')].map((m) => m.value).join() === 'Grace,Eileen'", timeout=60_000
    )
    assert page.text_content("#people-status") == "People: Grace (2 reference(s)), Eileen (2 reference(s))."
    page.fill("#steps", "2")
    page.click("#restore-all")
    page.wait_for_selector("#download", state="visible", timeout=120_000)
    captions = page.locator("#done-faces figcaption").all_text_contents()
    assert [c.split(" (")[0] for c in captions] == ["face 0 as Grace", "face 1 as Eileen"]
    references = page.locator("#chosen figcaption").all_text_contents()
    assert references == ["Grace: grace_a.jpg", "Grace: grace_b.jpg", "Eileen: eileen_a.jpg", "Eileen: eileen_b.jpg"]
    page.screenshot(path=str(tmp_path / "group.png"), full_page=True)

    # the user changes who a face is: Grace Hopper is left untouched, the astronaut restored without references
    page.select_option(".face-person >> nth=0", "\u0000skip")
    page.select_option(".face-person >> nth=1", "")
    page.click("#restore-all")
    page.wait_for_function("document.querySelectorAll('#done-faces figcaption').length === 1", timeout=120_000)
    page.wait_for_selector("#download", state="visible", timeout=120_000)
    assert page.locator("#done-faces figcaption").all_text_contents() == ["face 1 without references"]
    with page.expect_download() as waiting:
        page.click("#download")
    assert waiting.value.suggested_filename.endswith("_restored.jpg")
    saved = tmp_path / "restored.jpg"
    waiting.value.save_as(saved)
    restored = np.asarray(Image.open(saved).convert("RGB"), dtype=int)
    original = np.asarray(Image.open(group_photos["group.jpg"]).convert("RGB"), dtype=int)
    change = np.abs(restored - original).sum(axis=2)
    assert (change[:, :500] > 20).mean() > 0.01
    assert change[:, 540:].mean() < 3  # Grace Hopper's half untouched but for the JPEG written again
    page.close()


def test_fast_mode_switches_the_steps_and_gives_back_the_users_own(server, browser):
    page = browser.new_page()
    page.goto(server)
    page.wait_for_selector("#method option[value=composite]", state="attached")
    page.select_option("#method", "refldm")
    page.fill("#steps", "37")
    page.check("#fast")
    assert page.input_value("#steps") == "20"  # the server's fast step count for ReF-LDM
    page.uncheck("#fast")
    assert page.input_value("#steps") == "37"
    page.check("#fast")
    page.select_option("#method", "composite")  # no fast mode: Fast is switched off and the steps come back
    assert not page.is_visible("#fast-box") and not page.is_checked("#fast")
    assert page.input_value("#steps") == "37"
    page.close()
