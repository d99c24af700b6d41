"""Reference checks with code no one on this project wrote: the official `fastapi-poe`
client and server, and the official `openai` SDK.

Subcommands (each prints one JSON object on stdout; the Rust tests assert on it):
  check-fake BASE_URL KEY   run the official clients against the fake Poe
  ask BOT_URL BOT KEY TEXT  ask a bot with the official fastapi-poe client
  serve-bot KEY             run a fastapi-poe PoeBot on 127.0.0.1, print its port, serve
"""

import asyncio
import json
import socket
import sys
import traceback

import fastapi_poe as fp
from fastapi_poe.client import MetaMessage


def collect_fp(bot_url, bot, key, text, attachments=None, parameters=None):
    return asyncio.run(collect_fp_async(bot_url, bot, key, text, attachments, parameters))


async def collect_fp_async(bot_url, bot, key, text, attachments, parameters):
    """Asks with fastapi-poe's get_bot_response and folds the stream as Poe's UI would."""
    message = fp.ProtocolMessage(
        role="user", content=text, attachments=attachments or [], parameters=parameters or {}
    )
    result = {"text": "", "suggested": [], "files": [], "error": None, "messages": 0}
    try:
        async for partial in fp.get_bot_response(
            messages=[message], bot_name=bot, api_key=key, base_url=bot_url
        ):
            result["messages"] += 1
            if isinstance(partial, MetaMessage):
                continue
            if partial.attachment is not None:
                result["files"].append(
                    {"url": partial.attachment.url, "content_type": partial.attachment.content_type}
                )
            elif partial.is_suggested_reply:
                result["suggested"].append(partial.text)
            elif partial.is_replace_response:
                result["text"] = partial.text
            else:
                result["text"] += partial.text
    except Exception as err:  # the class and message are the result
        result["error"] = {"class": type(err).__name__, "message": str(err)}
    return result


def check_fake(base_url, key):
    from openai import OpenAI, APIError, RateLimitError

    bot_url = base_url + "/bot/"
    out = {}
    out["fp_echo"] = collect_fp(bot_url, "echo", key, "hello from fastapi-poe")
    out["fp_stream"] = collect_fp(bot_url, "streamer", key, "x")
    out["fp_replace"] = collect_fp(bot_url, "replacer", key, "x")
    out["fp_suggested"] = collect_fp(bot_url, "suggester", key, "x")
    out["fp_file"] = collect_fp(bot_url, "imagebot", key, "x")
    out["fp_error"] = collect_fp(bot_url, "failing", key, "x")
    out["fp_wrong_key"] = collect_fp(bot_url, "echo", key + "-wrong", "x")

    attachment = fp.upload_file_sync(
        file=b"hello attachment", file_name="note.txt", api_key=key, base_url=base_url + "/poe_api/"
    )
    by_url = fp.upload_file_sync(
        file_url="https://cdn.example/cat.png", file_name="cat.png", api_key=key,
        base_url=base_url + "/poe_api/",
    )
    out["fp_upload"] = {
        "url": attachment.url, "content_type": attachment.content_type, "name": attachment.name,
        "by_url": by_url.url, "by_url_content_type": by_url.content_type,
    }
    out["fp_with_attachment"] = collect_fp(
        bot_url, "echo", key, "see attached", attachments=[attachment],
        parameters={"thinking_budget": 1000},
    )

    client = OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
    stream = client.chat.completions.create(
        model="streamer", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    out["openai_stream"] = {"text": text, "usage": usage, "finish_reason": finish}

    whole = client.chat.completions.create(
        model="imagebot", messages=[{"role": "user", "content": "a cat"}], stream=False,
        extra_body={"aspect_ratio": "16:9"},
    )
    out["openai_whole"] = {
        "text": whole.choices[0].message.content,
        "finish_reason": whole.choices[0].finish_reason,
        "usage": whole.usage.model_dump() if whole.usage else None,
        "id": whole.id,
    }

    try:
        client.chat.completions.create(model="limited", messages=[{"role": "user", "content": "x"}])
        out["openai_limited"] = {"error": None}
    except RateLimitError as err:
        out["openai_limited"] = {"error": type(err).__name__, "status": err.status_code}

    try:
        text = ""
        for chunk in client.chat.completions.create(
            model="failing", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            for choice in chunk.choices:
                text += choice.delta.content or ""
        out["openai_midstream_error"] = {"error": None, "text": text}
    except APIError as err:
        out["openai_midstream_error"] = {"error": type(err).__name__, "text": text, "message": err.message}
    return out


def serve_bot(key):
    import uvicorn
    from fastapi_poe.types import PartialResponse, ErrorResponse

    class ReferenceBot(fp.PoeBot):
        async def get_response(self, request):
            last = request.query[-1]
            command = last.content.split()[0] if last.content.split() else ""
            if command == "stream":
                for piece in ["Hello", ", ", "wörld", " 👋🏽", "!"]:
                    yield PartialResponse(text=piece)
            elif command == "replace":
                yield PartialResponse(text="a draft that will vanish")
                yield PartialResponse(text="the final answer", is_replace_response=True)
                yield PartialResponse(text=" and more")
            elif command == "suggest":
                yield PartialResponse(text="main answer")
                yield PartialResponse(text="Tell me more", is_suggested_reply=True)
            elif command == "error":
                yield PartialResponse(text="partial ")
                yield ErrorResponse(text="the bot failed", allow_retry=False)
            elif command == "params":
                yield PartialResponse(text=json.dumps(last.parameters, sort_keys=True))
            elif command == "history":
                roles = [m.role for m in request.query]
                senders = [m.sender.name if m.sender else None for m in request.query]
                yield PartialResponse(text=json.dumps({"roles": roles, "senders": senders}))
            elif command == "attach":
                yield PartialResponse(
                    text=json.dumps([[a.name, a.content_type, a.url] for a in last.attachments])
                )
            else:
                yield PartialResponse(text=last.content)

    app = fp.make_app(ReferenceBot(), access_key=key)

    async def rewrite(scope, receive, send):
        # Poe serves bots at /bot/<name>; fastapi-poe serves one bot at /.
        if scope["type"] == "http" and scope["path"].startswith("/bot/"):
            scope = dict(scope, path="/", raw_path=b"/")
        await app(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(json.dumps({"port": sock.getsockname()[1]}), file=sys.__stdout__, flush=True)
    config = uvicorn.Config(rewrite, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


def main():
    command, args = sys.argv[1], sys.argv[2:]
    # fastapi-poe prints retry notices to stdout; keep stdout for the one JSON result.
    result_out, sys.stdout = sys.stdout, sys.stderr
    if command == "check-fake":
        print(json.dumps(check_fake(*args)), file=result_out)
    elif command == "ask":
        bot_url, bot, key, text = args
        print(json.dumps(collect_fp(bot_url, bot, key, text)), file=result_out)
    elif command == "serve-bot":
        serve_bot(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
