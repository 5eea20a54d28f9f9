"""The web chat page (``/ui``) in a real headless Chromium against a real ``pollama serve``.

One server per module holds SmolLM2 (``smollm2``, ChatML), ``echo`` (SmolLM2 with a template that
only concatenates the messages, so at temperature 0 it repeats a line it was shown several times:
a real answer that contains markup) and the tiny Gemma 3 vision model; its registry connections go
to a proxy that refuses them, so ``pull`` installs from the offline catalog. Answers the page shows
are checked against the same request made with httpx, images against the prompt's token count.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.conftest import (
    CHATML_TEMPLATE,
    ServerProcess,
    VisionFiles,
    create_from_gguf,
    free_port,
)

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
ECHO_TEMPLATE = "{{ range .Messages }}{{ .Content }}{{ end }}"
HOSTILE = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>'
T = TypeVar("T")


def _artifacts() -> Path:
    folder = Path(os.environ.get("POLLAMA_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for(what: Callable[[], T | None], timeout: float = 60.0, message: str = "") -> T:
    """Poll ``what`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {message or what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def ui_server(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, vision_files: VisionFiles
) -> Iterator[ServerProcess]:
    """A server with smollm2, echo and tiny-vision, and no registry it can reach."""
    home = tmp_path_factory.mktemp("home")
    dead = f"http://127.0.0.1:{free_port()}"
    proxies = {"HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead, "http_proxy": dead}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "POLLAMA_"))}
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({**env, "HOME": str(home), "OLLAMA_MODELS": str(home / ".ollama" / "models")})
    try:
        extra = {"OLLAMA_NUM_PARALLEL": "2", "OLLAMA_CONTEXT_LENGTH": "2048", "NO_PROXY": "", "no_proxy": ""}
        proc = ServerProcess(home, {**extra, **proxies}).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        with proc.client() as c:
            stops = {"stop": ["<|im_start|>", "<|im_end|>"]}
            create_from_gguf(c, "smollm2", smollm2_gguf, template=CHATML_TEMPLATE, parameters=stops)
            echo_parameters = {"temperature": 0, "num_predict": 40}
            create_from_gguf(c, "echo", smollm2_gguf, template=ECHO_TEMPLATE, parameters=echo_parameters)
            files = {}
            for path in (vision_files.model, vision_files.projector):
                files[path.name] = _digest_of_uploaded(c, path)
            r = c.post("/api/create", json={"model": "tiny-vision", "files": files, "stream": False})
            assert r.status_code == 200, r.text
        yield proc
    finally:
        proc.stop()


def _digest_of_uploaded(c: httpx.Client, path: Path) -> str:
    import hashlib

    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    if c.head(f"/api/blobs/{digest}").status_code != 200:
        assert c.post(f"/api/blobs/{digest}", content=path.read_bytes()).status_code in (200, 201)
    return digest


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """Headless Debian Chromium with a new empty profile and nothing running in the background."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail("chromium and chromium-driver are missing (scripts/test installs them)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: WebDriver, server: ServerProcess, *, fresh: bool = True) -> None:
    """Load /ui (after clearing this origin's storage when ``fresh``) and wait until it has listed the models."""
    driver.get(server.url + "/ui")
    if fresh:
        driver.execute_script("localStorage.clear()")
        driver.get(server.url + "/ui")
    wait_for(lambda: driver.execute_script("return document.body.dataset.ready === 'true'"), 30, "the page")


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def pick_model(driver: WebDriver, name: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(by_id(driver, "model-select")).select_by_value(name)


def stored(driver: WebDriver) -> list[dict[str, Any]]:
    """The conversations the page keeps in localStorage."""
    return list(json.loads(driver.execute_script("return localStorage.getItem('pollama.conversations') || '[]'")))


def current(driver: WebDriver) -> dict[str, Any]:
    current_id = driver.execute_script("return localStorage.getItem('pollama.current')")
    return next(c for c in stored(driver) if c["id"] == current_id)


def last_answer_text(driver: WebDriver) -> str:
    return str(
        driver.execute_script(
            "const m = document.querySelectorAll('#messages .message.assistant .content');"
            "return m.length ? m[m.length - 1].textContent : '';"
        )
    )


def idle(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return !document.body.classList.contains('busy')"))


def wait_for_answer(driver: WebDriver, timeout: float = 150.0) -> dict[str, Any]:
    """The last answer once it has ended (its stats arrived); fails on an error the page shows."""

    def answered() -> dict[str, Any] | None:
        error = driver.find_element(By.ID, "chat-error")
        if error.get_attribute("hidden") is None:
            pytest.fail(f"the page shows an error: {error.text}")
        last = current(driver)["messages"][-1]
        done = idle(driver) and last["role"] == "assistant" and last.get("stats", {}).get("eval_count") is not None
        return last if done else None

    return wait_for(answered, timeout, "the answer")


def set_options(driver: WebDriver, **values: str) -> None:
    by_id(driver, "open-settings").click()
    for key, value in values.items():
        field = by_id(driver, "set-system" if key == "system" else f"set-{key}")
        field.clear()
        field.send_keys(value)
    by_id(driver, "settings-save").click()


def accept_confirm(driver: WebDriver) -> str:
    def alert() -> Any:
        try:
            return driver.switch_to.alert
        except NoAlertPresentException:
            return None

    box = wait_for(alert, 10, "the confirmation")
    text = str(box.text)
    box.accept()
    return text


def reference_chat(server: ServerProcess, conversation: dict[str, Any], upto: int) -> dict[str, Any]:
    """The same /api/chat request the page made for the answer at ``upto``, sent by httpx."""
    messages = [{"role": m["role"], "content": m["content"]} for m in conversation["messages"][:upto]]
    if conversation["system"]:
        messages.insert(0, {"role": "system", "content": conversation["system"]})
    body = {"model": conversation["model"], "messages": messages, "stream": False, "options": conversation["options"]}
    with server.client() as c:
        r = c.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_root_text_and_page_headers(ui_server: ServerProcess) -> None:
    with ui_server.client() as c:
        root = c.get("/")
        assert (root.status_code, root.text) == (200, "Ollama is running")
        page = c.get("/ui")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == CSP
        assert '<script type="module" src="/ui/app.js"></script>' in page.text
        assert "http" not in re.sub(r'xmlns="[^"]*"', "", page.text).replace("http-equiv", "")
        script = c.get("/ui/markdown.js")
        assert (script.status_code, script.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
        assert "innerHTML" not in script.text
        assert c.get("/ui/nothing.js").status_code == 404
        assert c.get("/ui/%2e%2e%2f__init__.py").status_code == 404


def test_a_same_origin_page_on_a_lan_address_passes_the_guards(ui_server: ServerProcess) -> None:
    lan = f"192.168.7.20:{ui_server.port}"
    with ui_server.client() as c:
        ok = c.get("/api/tags", headers={"Host": lan, "Origin": f"http://{lan}"})
        assert ok.status_code == 200
        assert c.get("/ui", headers={"Host": lan}).status_code == 200
        cross = c.post("/api/chat", headers={"Host": lan, "Origin": "http://evil.example"}, json={})
        assert cross.status_code == 403


def test_chat_streams_stops_regenerates_edits_and_survives_a_reload(
    ui_server: ServerProcess, browser: WebDriver
) -> None:
    open_page(browser, ui_server)
    pick_model(browser, "smollm2:latest")
    set_options(browser, num_predict="400", temperature="0.8")
    prompt = by_id(browser, "prompt")
    prompt.send_keys("Tell me a long story about a dragon.")
    prompt.send_keys(Keys.ENTER)
    # The answer grows while it streams: several distinct lengths seen before it ends.
    lengths: list[int] = []

    def grown() -> bool:
        n = len(last_answer_text(browser))
        if n and (not lengths or n > lengths[-1]):
            lengths.append(n)
        return len(lengths) >= 4

    wait_for(grown, 150, "the answer to grow")
    assert not idle(browser), "the answer ended before it could be stopped"
    assert by_id(browser, "stop").is_displayed() and not by_id(browser, "send").is_displayed()
    prompt.send_keys(Keys.ESCAPE)
    wait_for(lambda: idle(browser), 10, "the stop")
    assert by_id(browser, "send").is_displayed() and not by_id(browser, "stop").is_displayed()
    stopped = current(browser)["messages"][-1]
    assert stopped["role"] == "assistant" and stopped["stats"]["done_reason"] == "stopped"
    assert len(stopped["content"]) >= lengths[-1] - 8
    assert "stopped" in browser.find_element(By.CSS_SELECTOR, ".message.assistant .stats").text

    # Regenerate with fixed options: the page's answer is the one httpx gets for the same request.
    set_options(browser, num_predict="16", temperature="0", seed="7")
    browser.find_element(By.CSS_SELECTOR, ".message.assistant .regenerate").click()
    wait_for_answer(browser)
    conversation = current(browser)
    assert conversation["options"] == {"temperature": 0, "seed": 7, "num_predict": 16}
    assert len(conversation["messages"]) == 2
    answer = conversation["messages"][1]
    expected = reference_chat(ui_server, conversation, 1)
    assert answer["content"] == expected["message"]["content"]
    assert answer["stats"]["eval_count"] == expected["eval_count"] == 16
    stats = browser.find_element(By.CSS_SELECTOR, ".message.assistant .stats").text
    assert re.fullmatch(r"\d+\.\d tokens/s · prompt \d+ tokens · answer 16 tokens · length", stats), stats
    assert f"prompt {expected['prompt_eval_count']} tokens" in stats

    # Edit the question and continue from it: the old answer goes, a new one comes.
    browser.find_element(By.CSS_SELECTOR, ".message.user .edit").click()
    area = browser.find_element(By.CSS_SELECTOR, ".message.user .edit-area")
    area.clear()
    area.send_keys("Name three colours.")
    browser.find_element(By.CSS_SELECTOR, ".message.user .save-edit").click()
    wait_for_answer(browser)
    conversation = current(browser)
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["messages"][0]["content"] == "Name three colours."
    edited = reference_chat(ui_server, conversation, 1)
    assert conversation["messages"][1]["content"] == edited["message"]["content"]

    # A reload finds the conversation, listed under its first question, with both messages.
    browser.refresh()
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready === 'true'"), 30)
    titles = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#conversation-list .title")]
    assert titles == ["Tell me a long story about a dragon."]
    shown = browser.find_elements(By.CSS_SELECTOR, "#messages .message")
    assert [e.get_attribute("class") for e in shown] == ["message user", "message assistant"]
    assert shown[0].find_element(By.CSS_SELECTOR, ".content").text == "Name three colours."
    browser.save_screenshot(str(_artifacts() / "ui-chat.png"))


def test_markup_in_a_real_answer_and_in_an_import_is_shown_as_text(
    ui_server: ServerProcess, browser: WebDriver, tmp_path: Path
) -> None:
    open_page(browser, ui_server)
    pick_model(browser, "echo:latest")
    prompt = by_id(browser, "prompt")
    # Shift+Enter makes new lines: the echo model sees the line four times and repeats it.
    for _ in range(4):
        prompt.send_keys(HOSTILE)
        prompt.send_keys(Keys.SHIFT, Keys.ENTER)
    assert by_id(browser, "prompt").get_property("value") == (HOSTILE + "\n") * 4
    prompt.send_keys(Keys.ENTER)
    wait_for_answer(browser)
    answer = current(browser)["messages"][-1]["content"]
    assert answer.startswith(HOSTILE + "\n")
    content = browser.find_element(By.CSS_SELECTOR, ".message.assistant .content")
    assert content.text.startswith(HOSTILE)
    assert content.find_elements(By.CSS_SELECTOR, "img, script") == []

    # An imported conversation with markup and Markdown: the markup is text, the Markdown is rendered.
    markdown = (
        "## Title\n\n- one **bold**\n- two `code`\n\n[docs](https://example.com) [bad](javascript:alert(1))\n\n"
        f"{HOSTILE}\n\n```python\nprint('<b>hi</b>')\n```"
    )
    exported = {
        "conversations": [
            {
                "title": "<b>imported</b>",
                "model": "smollm2",
                "messages": [
                    {"role": "user", "content": HOSTILE},
                    {"role": "assistant", "content": markdown, "thinking": f"I think {HOSTILE}"},
                ],
            }
        ]
    }
    path = tmp_path / "chats.json"
    path.write_text(json.dumps(exported))
    by_id(browser, "import-chats").send_keys(str(path))
    wait_for(lambda: current(browser)["title"] == "<b>imported</b>", 10, "the import")
    messages = by_id(browser, "messages")
    assert messages.find_elements(By.CSS_SELECTOR, "img, script, b") == []
    assert browser.execute_script("return window.__pwned") is None
    assert messages.find_element(By.CSS_SELECTOR, "h2").text == "Title"
    items = messages.find_elements(By.CSS_SELECTOR, ".assistant li")
    assert [li.text for li in items] == ["one bold", "two code"]
    assert items[0].find_element(By.CSS_SELECTOR, "strong").text == "bold"
    links = messages.find_elements(By.CSS_SELECTOR, ".assistant a")
    assert [(a.text, a.get_attribute("href")) for a in links] == [("docs", "https://example.com/")]
    assert "[bad](javascript:alert(1))" in messages.text
    assert messages.find_element(By.CSS_SELECTOR, ".code-block code").text == "print('<b>hi</b>')"
    assert messages.find_element(By.CSS_SELECTOR, ".code-block .copy").text == "Copy"
    thinking = messages.find_element(By.CSS_SELECTOR, "details.thinking")
    assert thinking.get_attribute("open") is None
    thinking.find_element(By.CSS_SELECTOR, "summary").click()
    assert thinking.find_element(By.CSS_SELECTOR, ".thinking-text").text == f"I think {HOSTILE}"
    assert by_id(browser, "conversation-list").find_elements(By.CSS_SELECTOR, "b") == []
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors  # no blocked script, no failed load


def test_images_and_text_files_go_with_the_message(
    ui_server: ServerProcess, browser: WebDriver, vision_files: VisionFiles
) -> None:
    open_page(browser, ui_server)
    pick_model(browser, "tiny-vision:latest")
    set_options(browser, num_predict="4", temperature="0", seed="1")
    shapes = base64.b64encode(vision_files.shapes.read_bytes()).decode()
    by_id(browser, "attach").send_keys(str(vision_files.shapes))
    # A pasted image and a dropped text file (a real DataTransfer, as the browser builds one).
    browser.execute_script(
        """
        const bytes = Uint8Array.from(atob(arguments[0]), (ch) => ch.charCodeAt(0));
        const paste = new DataTransfer();
        paste.items.add(new File([bytes], "pasted.png", { type: "image/png" }));
        document.getElementById("prompt").dispatchEvent(
          new ClipboardEvent("paste", { clipboardData: paste, bubbles: true, cancelable: true }));
        const drop = new DataTransfer();
        drop.items.add(new File(["alpha\\nbeta\\n"], "notes.txt", { type: "text/plain" }));
        document.getElementById("chat-view").dispatchEvent(
          new DragEvent("drop", { dataTransfer: drop, bubbles: true, cancelable: true }));
        """,
        base64.b64encode(vision_files.stripes.read_bytes()).decode(),
    )
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#attachments .attachment")) == 3, 10)
    prompt = by_id(browser, "prompt")
    prompt.send_keys("Describe.")
    prompt.send_keys(Keys.ENTER)
    wait_for_answer(browser)
    question, answer = current(browser)["messages"]
    stripes = base64.b64encode(vision_files.stripes.read_bytes()).decode()
    assert question["images"] == [shapes, stripes]
    assert question["files"] == [{"name": "notes.txt", "text": "alpha\nbeta\n"}]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".message.user .images img")) == 2
    # The prompt held both images (with the file inlined): each image adds the same number of tokens.
    inlined = "Describe.\n\n--- notes.txt ---\nalpha\nbeta\n\n--- end of notes.txt ---"
    with ui_server.client() as c:
        text_only = c.post(
            "/api/chat",
            json={
                "model": "tiny-vision",
                "messages": [{"role": "user", "content": inlined}],
                "stream": False,
                "options": {"num_predict": 1},
            },
        ).json()
        with_images = c.post(
            "/api/chat",
            json={
                "model": "tiny-vision",
                "messages": [{"role": "user", "content": inlined, "images": [shapes, stripes]}],
                "stream": False,
                "options": {"num_predict": 4, "temperature": 0, "seed": 1},
            },
        ).json()
        one_image = c.post(
            "/api/chat",
            json={
                "model": "tiny-vision",
                "messages": [{"role": "user", "content": inlined, "images": [shapes]}],
                "stream": False,
                "options": {"num_predict": 1},
            },
        ).json()
    assert answer["stats"]["prompt_eval_count"] == with_images["prompt_eval_count"]
    per_image = one_image["prompt_eval_count"] - text_only["prompt_eval_count"]
    assert per_image > 0
    assert with_images["prompt_eval_count"] == text_only["prompt_eval_count"] + 2 * per_image


def test_models_view_pulls_creates_and_deletes(ui_server: ServerProcess, browser: WebDriver) -> None:
    open_page(browser, ui_server)
    by_id(browser, "tab-models").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#installed tr[data-model='smollm2:latest']"), 20)
    row = browser.find_element(By.CSS_SELECTOR, "#installed tr[data-model='tiny-vision:latest']")
    cells = [td.text for td in row.find_elements(By.CSS_SELECTOR, "td")]
    assert cells[2] == "gemma3" and "vision" in cells[4].split(", ")
    loaded = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#loaded tr[data-model]"), 10)
    assert {r.get_attribute("data-model") for r in loaded} >= {"tiny-vision:latest"}

    for name in ("smollm2:135m", "gemma3:270m-base"):
        field = by_id(browser, "pull-name")
        field.clear()
        field.send_keys(name, Keys.ENTER)
        selector = f"#installed tr[data-model='{name}']"
        wait_for(lambda sel=selector: browser.find_elements(By.CSS_SELECTOR, sel), 90, f"{name} installed")
        assert by_id(browser, "pull-progress").get_property("value") == 100
        assert by_id(browser, "pull-percent").text == "100%"
        assert by_id(browser, "pull-text").text == "success"
    with ui_server.client() as c:
        names = {m["name"] for m in c.get("/api/tags").json()["models"]}
    assert {"smollm2:135m", "gemma3:270m-base"} <= names
    base = browser.find_element(By.CSS_SELECTOR, "#installed tr[data-model='gemma3:270m-base']")
    assert [td.text for td in base.find_elements(By.CSS_SELECTOR, "td")][2:4] == ["gemma3", "Q4_K_M"]

    # Create from a Modelfile typed in the page.
    by_id(browser, "create-name").send_keys("terse")
    modelfile = (
        'FROM smollm2:135m\nSYSTEM """You are terse.\nVery terse."""\n'
        "PARAMETER temperature 0.3\nPARAMETER stop <|im_end|>"
    )
    by_id(browser, "create-modelfile").send_keys(modelfile)
    browser.find_element(By.CSS_SELECTOR, "#create-form button[type=submit]").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#installed tr[data-model='terse:latest']"), 60)
    with ui_server.client() as c:
        shown = c.post("/api/show", json={"model": "terse"}).json()
    assert shown["system"] == "You are terse.\nVery terse."
    assert re.search(r"temperature\s+0.3", shown["parameters"])
    assert re.search(r"stop\s+\"?<\|im_end\|>", shown["parameters"])

    # Delete, after a confirmation.
    browser.find_element(By.CSS_SELECTOR, "#installed tr[data-model='gemma3:270m-base'] .delete-model").click()
    assert accept_confirm(browser) == "Delete gemma3:270m-base?"
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, "#installed tr[data-model='gemma3:270m-base']"), 20)
    with ui_server.client() as c:
        assert "gemma3:270m-base" not in {m["name"] for m in c.get("/api/tags").json()["models"]}
    options = by_id(browser, "model-select").find_elements(By.TAG_NAME, "option")
    assert "terse:latest" in [o.get_attribute("value") for o in options]
    browser.save_screenshot(str(_artifacts() / "ui-models.png"))


def test_the_page_asks_for_an_api_key_once_and_keeps_it(start_server: Any, browser: WebDriver) -> None:
    server: ServerProcess = start_server(POLLAMA_API_KEYS="sk-ui-right")
    with server.client() as c:
        assert c.get("/ui").status_code == 200 and c.get("/ui/app.js").status_code == 200
        assert c.get("/api/tags").status_code == 401
    browser.get(server.url + "/ui")
    dialog = by_id(browser, "key-dialog")
    wait_for(lambda: dialog.get_attribute("open") is not None, 20, "the key dialog")
    by_id(browser, "key-input").send_keys("sk-ui-wrong", Keys.ENTER)
    wait_for(lambda: "refused" in by_id(browser, "key-message").text, 10, "the second ask")
    assert dialog.get_attribute("open") is not None
    by_id(browser, "key-input").send_keys("sk-ui-right", Keys.ENTER)
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready === 'true'"), 20)
    assert dialog.get_attribute("open") is None
    assert browser.execute_script("return localStorage.getItem('pollama.apiKey')") == "sk-ui-right"
    assert by_id(browser, "model-select").text == "no models"
    assert by_id(browser, "chat-error").get_attribute("hidden") is not None
    # A reload uses the kept key: no dialog.
    browser.refresh()
    wait_for(lambda: browser.execute_script("return document.body.dataset.ready === 'true'"), 20)
    assert by_id(browser, "key-dialog").get_attribute("open") is None


def test_phone_width_and_dark_theme(ui_server: ServerProcess, browser: WebDriver) -> None:
    open_page(browser, ui_server)
    background = "return getComputedStyle(document.body).backgroundColor"
    assert browser.execute_script(background) == "rgb(255, 255, 255)"
    dark = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", dark)
    try:
        assert browser.execute_script(background) == "rgb(21, 23, 27)"
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    size = browser.get_window_size()
    browser.set_window_size(390, 800)
    try:
        wait_for(lambda: browser.execute_script("return window.innerWidth") <= 400, 10, "the phone width")
        # Nothing wider than the screen; the conversation list is off-screen until the ☰ button opens it.
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        sidebar = by_id(browser, "sidebar")
        wait_for(lambda: sidebar.rect["x"] + sidebar.rect["width"] <= 1, 5, "the list to slide away")
        by_id(browser, "toggle-sidebar").click()
        wait_for(lambda: by_id(browser, "sidebar").rect["x"] >= 0, 5, "the conversation list")
        assert by_id(browser, "prompt").rect["width"] > 200
        assert by_id(browser, "send").is_displayed()
    finally:
        browser.set_window_size(size["width"], size["height"])


def test_conversations_are_renamed_deleted_and_exported(ui_server: ServerProcess, browser: WebDriver) -> None:
    open_page(browser, ui_server)
    by_id(browser, "new-chat").click()
    assert len(stored(browser)) == 2
    browser.find_element(By.CSS_SELECTOR, "#conversation-list li.active .rename").click()
    box = wait_for(lambda: browser.switch_to.alert, 10, "the rename prompt")
    box.send_keys("Renamed <i>chat</i>")
    box.accept()
    wait_for(lambda: current(browser)["title"] == "Renamed <i>chat</i>", 10, "the new title")
    assert browser.find_element(By.CSS_SELECTOR, "#conversation-list li.active .title").text == "Renamed <i>chat</i>"
    # The export file's text, read back by the import: the same conversations.
    text = browser.execute_async_script(
        "const done = arguments[0];import('/ui/conversations.js').then((m) => done(m.exportText(m.loadAll())));"
    )
    exported = json.loads(text)
    assert exported["format"] == "pollama-conversations"
    assert [c["title"] for c in exported["conversations"]] == [c["title"] for c in stored(browser)]
    browser.find_element(By.CSS_SELECTOR, "#conversation-list li.active .delete").click()
    assert accept_confirm(browser) == "Delete “Renamed <i>chat</i>”?"
    wait_for(lambda: len(stored(browser)) == 1, 10, "the deletion")
    assert "Renamed <i>chat</i>" not in [c["title"] for c in stored(browser)]
