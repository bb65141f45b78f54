"""A readable fiscal bill PDF for an order, for the demo and the tests.

The page imitates the layout of a 非税收入一般缴款书（电子）: the bill's code and number, its date
(the UTC+8 calendar), the collecting unit, one line item, the amount in figures and in capital
Chinese numerals, and a seal. It is stamped as demo data: it is no real bill.

Chinese text needs a font with CJK glyphs. The first TrueType CJK font found on the machine is
embedded (subset), so the PDF looks the same everywhere; without one, reportlab's built-in
`STSong-Light` CID font is used, which needs no file (the viewer supplies the glyphs). The
environment variable NONTAX_BILL_FONT names a font file to use instead, or `cid` to force the
built-in font.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from reportlab.lib import colors
from reportlab.lib.pagesizes import A5, landscape
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFError, TTFont
from reportlab.pdfgen.canvas import Canvas

from wechat_nontax.settings import BEIJING_TIME
from wechat_nontax.wechat.bill import Order

FONT_ENV = "NONTAX_BILL_FONT"
CID_FONT = "STSong-Light"
# TrueType CJK fonts in the usual places (Debian/Ubuntu packages, macOS). OpenType/CFF fonts
# such as Noto Sans CJK are listed too but reportlab cannot embed them: they are skipped.
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/arphic/ukai.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
)
SEAL_RED = colors.Color(0.80, 0.08, 0.10)
INK = colors.Color(0.10, 0.10, 0.10)
LINE = colors.Color(0.55, 0.30, 0.20)  # the brownish rule colour of printed bills


@dataclass(frozen=True)
class BillFont:
    name: str  # as registered with reportlab
    source: str  # the embedded file, or "built-in CID font STSong-Light"

    @property
    def embedded(self) -> bool:
        return self.name != CID_FONT


def _fc_list_fonts() -> Iterator[str]:
    """Font files fontconfig knows for Chinese, when fc-list exists."""
    fc_list = shutil.which("fc-list")
    if fc_list is None:
        return
    try:
        listed = subprocess.run(
            [fc_list, ":lang=zh", "file"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return
    for line in sorted(listed.splitlines()):
        path = line.strip().rstrip(":").strip()
        if path.lower().endswith((".ttf", ".ttc")):
            yield path


def _font_files() -> Iterator[str]:
    yield from FONT_CANDIDATES
    yield from _fc_list_fonts()


def _register_cid() -> BillFont:
    pdfmetrics.registerFont(UnicodeCIDFont(CID_FONT))
    return BillFont(CID_FONT, f"built-in CID font {CID_FONT} (not embedded)")


def _register_file(path: str) -> BillFont | None:
    try:
        font = TTFont("BillCJK", path, subfontIndex=0)
    except (TTFError, OSError, ValueError, KeyError, IndexError):
        return None  # not TrueType (CFF outlines), unreadable or not a font
    # A font without common Chinese glyphs (a Latin font listed by mistake) is no use.
    if any(ord(c) not in font.face.charToGlyph for c in "非税收入缴款书"):
        return None
    pdfmetrics.registerFont(font)
    return BillFont("BillCJK", path)


@functools.cache
def bill_font() -> BillFont:
    """The font for the bills: NONTAX_BILL_FONT, else the first usable CJK TrueType font found,
    else the built-in CID font."""
    wanted = os.environ.get(FONT_ENV, "").strip()
    if wanted.lower() == "cid":
        return _register_cid()
    if wanted:
        font = _register_file(wanted)
        if font is None:
            raise ValueError(f"{FONT_ENV}={wanted}: not a TrueType font with Chinese glyphs")
        return font
    seen: set[str] = set()
    for path in _font_files():
        if path in seen or not Path(path).is_file():
            continue
        seen.add(path)
        font = _register_file(path)
        if font is not None:
            return font
    return _register_cid()


# -- amounts ----------------------------------------------------------------------------------

_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_PLACES = ("", "拾", "佰", "仟")
_SECTIONS = ("", "万", "亿", "万亿")


def format_yuan(fen: int) -> str:
    """12345 fen -> '123.45' (yuan, thousands separated)."""
    yuan, rest = divmod(fen, 100)
    return f"{yuan:,}.{rest:02d}"


def amount_in_words(fen: int) -> str:
    """The amount in capital Chinese numerals, as bills write it: 12345 -> 壹佰贰拾叁元肆角伍分."""
    if fen < 0:
        raise ValueError(f"a bill's amount cannot be negative: {fen}")
    yuan, rest = divmod(fen, 100)
    jiao, cents = divmod(rest, 10)
    if fen == 0:
        return "零元整"
    words = ""
    if yuan:
        digits = str(yuan)
        zero_pending = False
        for i, char in enumerate(digits):
            place = len(digits) - 1 - i
            if char == "0":
                zero_pending = True
            else:
                if zero_pending:
                    words += "零"
                    zero_pending = False
                words += _DIGITS[int(char)] + _PLACES[place % 4]
            if place % 4 == 0 and place > 0 and int(digits[max(0, i - 3) : i + 1]):
                words += _SECTIONS[place // 4]
        words += "元"
    if jiao:
        words += _DIGITS[jiao] + "角"
    elif yuan and cents:
        words += "零"
    if cents:
        words += _DIGITS[cents] + "分"
    else:
        words += "整"
    return words


# -- the page ---------------------------------------------------------------------------------


def split_title(title: str) -> tuple[str, str]:
    """'某大学 学费' -> ('某大学', '学费'): the collecting unit and the fee item."""
    unit, _, item = title.strip().rpartition(" ")
    return (unit.strip(), item) if unit.strip() else (title, title)


def check_code(order: Order) -> str:
    """A short check code over the bill's fields, printed like the real bills' 校验码."""
    text = f"{order.billing_code}|{order.billing_no}|{order.fee}|{order.billing_time}"
    return hashlib.sha256(text.encode()).hexdigest()[:6].upper()


def render_bill_pdf(order: Order) -> bytes:
    """The bill's PDF (one A5 landscape page) as bytes; byte-for-byte the same for the same
    order and font."""
    font = bill_font()
    buffer = io.BytesIO()
    page_w, page_h = landscape(A5)
    canvas = Canvas(buffer, pagesize=(page_w, page_h), invariant=True, pageCompression=1)
    canvas.setTitle(f"非税收入一般缴款书 {order.billing_code}-{order.billing_no}")
    canvas.setAuthor("nontax demo")
    canvas.setSubject(f"order {order.order_id}")
    _draw_bill(canvas, order, font.name, page_w, page_h)
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


def _draw_bill(canvas: Canvas, order: Order, font: str, page_w: float, page_h: float) -> None:
    unit, item = split_title(order.title)
    day = datetime.fromtimestamp(order.billing_time, BEIJING_TIME)
    left, right = 36.0, page_w - 36.0

    # The fiscal supervision seal above the title, and the title.
    _oval_seal(canvas, font, page_w / 2, page_h - 34, "财政票据监制章", "演示")
    canvas.setFillColor(INK)
    canvas.setFont(font, 17)
    canvas.drawCentredString(page_w / 2, page_h - 72, "非税收入一般缴款书（电子）")
    canvas.setStrokeColor(LINE)
    canvas.setLineWidth(0.8)
    title_w = pdfmetrics.stringWidth("非税收入一般缴款书（电子）", font, 17)
    for dy in (-77, -79.5):
        canvas.line(page_w / 2 - title_w / 2, page_h + dy, page_w / 2 + title_w / 2, page_h + dy)

    # The bill's identity.
    canvas.setFont(font, 9)
    y = page_h - 100
    canvas.drawString(left, y, f"票据代码：{order.billing_code}")
    canvas.drawString(left + 175, y, f"票据号码：{order.billing_no}")
    canvas.drawRightString(right, y, f"开票日期：{day:%Y-%m-%d}")
    y -= 14
    canvas.drawString(left, y, f"订单号：{order.order_id}")
    canvas.drawString(left + 175, y, f"校验码：{check_code(order)}")
    canvas.drawRightString(right, y, f"交款时间：{day:%Y-%m-%d %H:%M}（北京时间）")

    # The table.
    top = y - 10
    row_h = 22.0
    columns = [left, left + 80, left + 225, left + 280, left + 325, left + 410, right]
    headers = ["项目编码", "项目名称", "单位", "数量", "标准（元）", "金额（元）"]
    rows = 7
    bottom = top - rows * row_h
    canvas.setStrokeColor(LINE)
    canvas.setLineWidth(1.2)
    canvas.rect(left, bottom, right - left, top - bottom)
    canvas.setLineWidth(0.6)
    for r in range(1, rows):
        canvas.line(left, top - r * row_h, right, top - r * row_h)
    # Row 0: the collecting unit over the whole width.
    canvas.line(columns[1], top, columns[1], top - row_h)
    text_y = top - row_h + 7.5
    canvas.setFont(font, 9)
    canvas.drawCentredString((columns[0] + columns[1]) / 2, text_y, "执收单位名称")
    canvas.setFont(font, 10)
    canvas.drawString(columns[1] + 8, text_y, unit)
    # Rows 1-4: header, the line item, two blank lines.
    for x in columns[1:-1]:
        canvas.line(x, top - row_h, x, top - 5 * row_h)
    canvas.setFont(font, 9)
    text_y = top - 2 * row_h + 7.5
    for i, header in enumerate(headers):
        canvas.drawCentredString((columns[i] + columns[i + 1]) / 2, text_y, header)
    text_y -= row_h
    amount = format_yuan(order.fee)
    cells = [_item_code(order), item, "次", "1", amount, amount]
    canvas.setFont(font, 10)
    for i, cell in enumerate(cells):
        if i >= 4:
            canvas.drawRightString(columns[i + 1] - 8, text_y, cell)
        else:
            canvas.drawCentredString((columns[i] + columns[i + 1]) / 2, text_y, cell)
    # Row 5: the total, in words and in figures.
    text_y = top - 6 * row_h + 7.5
    canvas.line(columns[1], top - 5 * row_h, columns[1], top - 7 * row_h)
    canvas.line(columns[5], top - 5 * row_h, columns[5], top - 6 * row_h)
    canvas.setFont(font, 9)
    canvas.drawCentredString((columns[0] + columns[1]) / 2, text_y, "金额合计（大写）")
    canvas.setFont(font, 10)
    canvas.drawString(columns[1] + 8, text_y, amount_in_words(order.fee))
    canvas.drawRightString(columns[5] - 8, text_y, "（小写）")
    canvas.drawRightString(right - 8, text_y, f"￥{amount}")
    # Row 6: remarks.
    text_y -= row_h
    canvas.setFont(font, 9)
    canvas.drawCentredString((columns[0] + columns[1]) / 2, text_y, "备注")
    canvas.drawString(columns[1] + 8, text_y, f"微信缴费  {order.title}  订单号 {order.order_id}")

    # Signatures, the unit's seal and the demo notice.
    y = bottom - 20
    canvas.setFont(font, 9)
    canvas.drawString(left, y, "执收单位（章）")
    canvas.drawString(left + 200, y, "复核人：系统")
    canvas.drawString(left + 330, y, "收款人：微信支付")
    _round_seal(canvas, font, right - 48, bottom - 42, unit)
    canvas.setFont(font, 7)
    canvas.setFillColor(colors.grey)
    canvas.drawCentredString(
        page_w / 2, 16, "演示票据：由 nontax_dev.demo 生成的模拟数据，不具法律效力"
    )


def _item_code(order: Order) -> str:
    """A stable, plausible 项目编码 for the fee item."""
    return "103" + str(int(hashlib.sha256(order.title.encode()).hexdigest()[:6], 16))[:6]


def _oval_seal(canvas: Canvas, font: str, cx: float, cy: float, text: str, sub: str) -> None:
    canvas.saveState()
    canvas.setStrokeColor(SEAL_RED)
    canvas.setFillColor(SEAL_RED)
    canvas.setLineWidth(1.2)
    canvas.ellipse(cx - 52, cy - 16, cx + 52, cy + 16, stroke=1, fill=0)
    canvas.setFont(font, 9)
    canvas.drawCentredString(cx, cy + 1, text)
    canvas.setFont(font, 7)
    canvas.drawCentredString(cx, cy - 10, sub)
    canvas.restoreState()


def _round_seal(canvas: Canvas, font: str, cx: float, cy: float, unit: str) -> None:
    """A red round seal: the unit's name across, a star, and 演示专用章."""
    canvas.saveState()
    canvas.setStrokeColor(SEAL_RED)
    canvas.setFillColor(SEAL_RED)
    canvas.setLineWidth(1.6)
    radius = 36.0
    canvas.circle(cx, cy, radius, stroke=1, fill=0)
    _star(canvas, cx, cy + 3, 9)
    size = 7.0
    name = unit if len(unit) <= 10 else unit[:10]
    while size > 4 and pdfmetrics.stringWidth(name, font, size) > 2 * radius - 10:
        size -= 0.5
    canvas.setFont(font, size)
    canvas.drawCentredString(cx, cy + 16, name)
    canvas.setFont(font, 7)
    canvas.drawCentredString(cx, cy - 18, "演示专用章")
    canvas.restoreState()


def _star(canvas: Canvas, cx: float, cy: float, r: float) -> None:
    path = canvas.beginPath()
    for i in range(10):
        angle = math.pi / 2 + i * math.pi / 5
        radius = r if i % 2 == 0 else r * 0.38
        x, y = cx + radius * math.cos(angle), cy + radius * math.sin(angle)
        if i == 0:
            path.moveTo(x, y)
        else:
            path.lineTo(x, y)
    path.close()
    canvas.drawPath(path, stroke=0, fill=1)
