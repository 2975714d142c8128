from uploader.cli import app

app(prog_name="uploader")
